//! PiSSA initialisation as PEFT's `pissa_init`: A and B from the top-r singular triplets of the
//! base weight (`A = √(S/s)·Vᵀ`, `B = U·√(S/s)`), the base replaced by the residual
//! `W − s·B·A`; the exact SVD (`pissa`) or the randomized one of `torch.svd_lowrank`
//! (`pissa_niter_N`); and the conversion of a trained PiSSA adapter to a plain rank-2r LoRA of
//! the original base (PEFT's `path_initial_model_for_weight_conversion`).
//!
//! The SVD is computed in f64 from the eigen-decomposition of the smaller Gram matrix
//! (Householder tridiagonalisation + implicit QL, as EISPACK's tred2/tql2): exact to f32 for the
//! top singular values, which are the only ones PiSSA keeps. Singular vectors are defined up to
//! a common sign per component, so A and B may differ from PyTorch's by such signs; `B·A`, the
//! residual and everything the model computes do not.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

/// The top-r singular triplets of a `rows × cols` matrix: `u` `[rows, r]`, `s` `[r]` (largest
/// first), `vt` `[r, cols]`, row-major.
pub struct TopSvd {
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    pub vt: Vec<f64>,
    pub r: usize,
}

/// PiSSA's factors of `w` `[out, in]`: `(A [r, in], B [out, r], residual [out, in])` in `w`'s
/// dtype. `niter: None` is the exact SVD, `Some(n)` the randomized one with `n` subspace
/// iterations (seeded).
pub fn pissa_factors(
    w: &Tensor,
    r: usize,
    scaling: f64,
    niter: Option<u32>,
    seed: u64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (rows, cols) = w.dims2()?;
    if r > rows.min(cols) {
        return Err(Error::Adapter(format!(
            "PiSSA needs lora_r ≤ min(out, in) of every target; a [{rows}, {cols}] weight has \
             {} singular values, lora_r is {r}",
            rows.min(cols)
        )));
    }
    let data: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let svd = match niter {
        None => top_svd(&data, rows, cols, r),
        Some(n) => lowrank_svd(&data, rows, cols, r, n, seed),
    };
    // A = diag(√(S/s))·Vᵀ, B = U·diag(√(S/s))
    let root: Vec<f64> = svd
        .s
        .iter()
        .map(|&s| (s / scaling).max(0.0).sqrt())
        .collect();
    let mut a = svd.vt.clone();
    for (i, row) in a.chunks_mut(cols).enumerate() {
        row.iter_mut().for_each(|x| *x *= root[i]);
    }
    let mut b = svd.u.clone();
    for row in b.chunks_mut(r) {
        row.iter_mut().zip(&root).for_each(|(x, k)| *x *= k);
    }
    let dev = w.device();
    let a = Tensor::from_vec(a, (r, cols), dev)?;
    let b = Tensor::from_vec(b, (rows, r), dev)?;
    let residual = (w.to_dtype(DType::F64)? - (b.matmul(&a)? * scaling)?)?;
    // The factors are adapter master weights (f32, as PEFT keeps them); the residual is the
    // base, in its own dtype.
    let dt = w.dtype();
    Ok((
        a.to_dtype(DType::F32)?,
        b.to_dtype(DType::F32)?,
        residual.to_dtype(dt)?,
    ))
}

/// Exact top-r SVD through the eigen-decomposition of the smaller Gram matrix.
pub fn top_svd(w: &[f64], rows: usize, cols: usize, r: usize) -> TopSvd {
    let t = |x: &[f64], m: usize, n: usize| -> Vec<f64> {
        let mut o = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                o[j * m + i] = x[i * n + j];
            }
        }
        o
    };
    if cols <= rows {
        // WᵀW = V S² Vᵀ; U = W V / S
        let g = matmul(&t(w, rows, cols), w, cols, rows, cols);
        let (vals, vecs) = top_eigen(g, cols, r);
        let s: Vec<f64> = vals.iter().map(|&l| l.max(0.0).sqrt()).collect();
        let mut vt = vec![0.0; r * cols];
        for k in 0..r {
            for j in 0..cols {
                vt[k * cols + j] = vecs[j * r + k];
            }
        }
        let mut u = matmul(w, &vecs, rows, cols, r);
        normalise_columns(&mut u, rows, r, &s);
        TopSvd { u, s, vt, r }
    } else {
        // W Wᵀ = U S² Uᵀ; Vᵀ = Uᵀ W / S
        let g = matmul(w, &t(w, rows, cols), rows, cols, rows);
        let (vals, u) = top_eigen(g, rows, r);
        let s: Vec<f64> = vals.iter().map(|&l| l.max(0.0).sqrt()).collect();
        let vt_unscaled = matmul(&t(&u, rows, r), w, r, rows, cols);
        let mut vt = t(&vt_unscaled, r, cols); // [cols, r] to normalise columns
        normalise_columns(&mut vt, cols, r, &s);
        TopSvd {
            u,
            s,
            vt: t(&vt, cols, r),
            r,
        }
    }
}

/// `torch.svd_lowrank(W, q=r, niter)` (Halko et al.): a Gaussian sketch, `niter` rounds of
/// subspace iteration with re-orthonormalisation, then the exact SVD of the small `Qᵀ W`.
pub fn lowrank_svd(w: &[f64], rows: usize, cols: usize, r: usize, niter: u32, seed: u64) -> TopSvd {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..cols * r).map(|_| crate::nn::normal(&mut rng)).collect();
    let wt = {
        let mut o = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                o[j * rows + i] = w[i * cols + j];
            }
        }
        o
    };
    let mut q = matmul(w, &omega, rows, cols, r);
    orthonormalise(&mut q, rows, r);
    for _ in 0..niter {
        let mut z = matmul(&wt, &q, cols, rows, r);
        orthonormalise(&mut z, cols, r);
        q = matmul(w, &z, rows, cols, r);
        orthonormalise(&mut q, rows, r);
    }
    // B = Qᵀ W (r × cols); B = U_b S Vᵀ; U = Q U_b
    let qt = {
        let mut o = vec![0.0; r * rows];
        for i in 0..rows {
            for j in 0..r {
                o[j * rows + i] = q[i * r + j];
            }
        }
        o
    };
    let small = matmul(&qt, w, r, rows, cols);
    let svd = top_svd(&small, r, cols, r);
    TopSvd {
        u: matmul(&q, &svd.u, rows, r, r),
        s: svd.s,
        vt: svd.vt,
        r,
    }
}

/// `[m, k] · [k, n]`, row-major, through candle's f64 matmul.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let dev = Device::Cpu;
    let prod = Tensor::from_slice(a, (m, k), &dev)
        .and_then(|a| a.matmul(&Tensor::from_slice(b, (k, n), &dev)?))
        .and_then(|p| p.flatten_all()?.to_vec1::<f64>());
    // Shapes are ours and consistent; a CPU matmul of them cannot fail.
    prod.unwrap_or_else(|_| vec![0.0; m * n])
}

/// Divides column `k` of `x` `[m, r]` by `s[k]` (columns of a zero singular value stay zero).
fn normalise_columns(x: &mut [f64], m: usize, r: usize, s: &[f64]) {
    let tiny = s.first().copied().unwrap_or(0.0) * 1e-12;
    for i in 0..m {
        for k in 0..r {
            x[i * r + k] = if s[k] > tiny {
                x[i * r + k] / s[k]
            } else {
                0.0
            };
        }
    }
}

/// Modified Gram–Schmidt, twice ("twice is enough"), on the columns of `x` `[m, r]`.
fn orthonormalise(x: &mut [f64], m: usize, r: usize) {
    for _ in 0..2 {
        for k in 0..r {
            for j in 0..k {
                let dot: f64 = (0..m).map(|i| x[i * r + j] * x[i * r + k]).sum();
                for i in 0..m {
                    x[i * r + k] -= dot * x[i * r + j];
                }
            }
            let norm = (0..m).map(|i| x[i * r + k].powi(2)).sum::<f64>().sqrt();
            if norm > 0.0 {
                for i in 0..m {
                    x[i * r + k] /= norm;
                }
            }
        }
    }
}

/// The `r` largest eigenvalues of the symmetric `n × n` matrix `a` (descending) and their
/// eigenvectors as the columns of an `[n, r]` matrix.
pub fn top_eigen(a: Vec<f64>, n: usize, r: usize) -> (Vec<f64>, Vec<f64>) {
    let (d, v) = symmetric_eigen(a, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let vals = order[..r].iter().map(|&i| d[i]).collect();
    let mut vecs = vec![0.0; n * r];
    for (k, &i) in order[..r].iter().enumerate() {
        for row in 0..n {
            vecs[row * r + k] = v[row * n + i];
        }
    }
    (vals, vecs)
}

/// Eigenvalues and eigenvectors (columns of the returned `n × n`) of a symmetric matrix:
/// Householder reduction to tridiagonal form, then the implicit QL algorithm (EISPACK
/// tred2/tql2, as in JAMA).
pub fn symmetric_eigen(mut v: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    if n == 0 {
        return (d, v);
    }
    let at = |i: usize, j: usize| i * n + j;
    // tred2
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for dk in d.iter().take(i) {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for dk in d.iter_mut().take(i) {
                *dk /= scale;
                h += *dk * *dk;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                let f = d[j];
                v[at(j, i)] = f;
                let mut g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let f = d[j];
                let g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
    // tql2
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            for _ in 0..100 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        h = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * h;
                        v[at(k, i)] = c * v[at(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    (d, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix() {
        let n = 17;
        let x = random(n * n, 1);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = x[i * n + j] + x[j * n + i];
            }
        }
        let (d, v) = symmetric_eigen(a.clone(), n);
        for i in 0..n {
            for j in 0..n {
                let rec: f64 = (0..n).map(|k| v[i * n + k] * d[k] * v[j * n + k]).sum();
                assert!((rec - a[i * n + j]).abs() < 1e-10, "({i},{j})");
                let dot: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                assert!((dot - f64::from(i == j)).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn top_svd_of_both_shapes_and_lowrank_on_a_decaying_spectrum() {
        for (rows, cols) in [(12, 7), (7, 12)] {
            let w = random(rows * cols, 2);
            let svd = top_svd(&w, rows, cols, 7);
            // Full rank 7: U S Vᵀ reproduces W.
            for i in 0..rows {
                for j in 0..cols {
                    let rec: f64 = (0..7)
                        .map(|k| svd.u[i * 7 + k] * svd.s[k] * svd.vt[k * cols + j])
                        .sum();
                    assert!((rec - w[i * cols + j]).abs() < 1e-9);
                }
            }
            assert!(svd.s.windows(2).all(|p| p[0] >= p[1]));
        }
        // A rank-3 matrix plus noise: 2 subspace iterations find its top 3 singular values.
        let (rows, cols) = (40, 30);
        let (a, b, noise) = (
            random(rows * 3, 3),
            random(3 * cols, 4),
            random(rows * cols, 5),
        );
        let mut w = matmul(&a, &b, rows, 3, cols);
        w.iter_mut().zip(&noise).for_each(|(x, n)| *x += 1e-3 * n);
        let exact = top_svd(&w, rows, cols, 3);
        let fast = lowrank_svd(&w, rows, cols, 3, 2, 0);
        for k in 0..3 {
            assert!((exact.s[k] - fast.s[k]).abs() / exact.s[k] < 1e-6, "{k}");
        }
    }
}

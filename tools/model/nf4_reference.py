"""Writes the NF4 / int8 fixtures of crates/model/src/quant.rs's tests (crates/model/fixtures/nf4/).

The reference is bitsandbytes itself on the CPU (`quantize_4bit(..., quant_type='nf4',
blocksize=64, compress_statistics=True)`, `int8_vectorwise_quant`); a numpy implementation of
the same algorithm is checked against it bit for bit, and is what runs when bitsandbytes is not
installed. The Rust tests never run this script.

    pip install bitsandbytes torch numpy   # bitsandbytes 0.50.2's CPU build works
    python3 tools/model/nf4_reference.py   # writes crates/model/fixtures/nf4/

The algorithm (bitsandbytes 0.50.2, CPU):
- NF4: blocks of 64 over the flattened row-major weight; absmax per block (fp32);
  scaled = clamp(w * (1 / absmax), -1, 1) in fp32; index = bucketize(scaled, midpoints of the
  16 code values) (ties go to the lower code); two indices per byte, the first in the HIGH nibble.
- Double quantization: offset = torch.mean(absmax) (fp32, torch's summation order: the Rust
  side takes the f64 mean rounded to fp32, which may differ in the last bit); absmax - offset quantized blockwise (blocks of
  256) with the signed dynamic 8-bit map (`create_dynamic_map()`), as bitsandbytes' CPU kernel
  does it: per block its absmax2; v = clamp(x * (1 / absmax2), -1, 1); t = trunc(((v + 1) * 0.5)
  * 65535 + 0.5) (each step rounded to fp32); index = lut[t], where lut[i] is the number of code
  midpoints 0.5 * (code[j] + code[j+1]) below -1 + (2 * i) / 65535 (a nearest-value search on a
  65536-point grid); an all-zero block gets index 0. Dequantized: absmax = code[q] * absmax2
  + offset.
- Weight: code4[nibble] * absmax (fp32).
- int8 (LLM.int8 row-wise): stats = max |w| per row; q = round_half_even(w * (127 / stats)).
  Dequantized: q * stats * (1/127 in fp32).

Files (little-endian raw arrays) and meta.json describe one weight per case.
"""

import json
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates", "model", "fixtures", "nf4")

NF4 = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)


def dynamic_map():
    """`bitsandbytes.functional.create_dynamic_map(signed=True, 7, 8)`, via torch when present."""
    import torch

    data = []
    non_sign_bits, max_exp = 7, 7
    additional = 2 ** (non_sign_bits - max_exp) - 1
    for i in range(max_exp):
        items = int(2 ** (i + non_sign_bits - max_exp) + 1)
        b = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-(max_exp - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exp - 1) + i)) * means).tolist()
    assert additional == 0
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32).numpy()


def nf4_quantize(w):
    flat = w.reshape(-1).astype(np.float32)
    n = flat.size
    nb = -(-n // 64)
    pad = np.zeros(nb * 64, np.float32)
    pad[:n] = flat
    blocks = pad.reshape(nb, 64)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    # the partial last block: max over its real elements only (padding is 0, so the same)
    inv = (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    scaled = np.clip(blocks * inv[:, None], -1, 1).astype(np.float32).reshape(-1)[:n]
    bounds = ((NF4[:-1] + NF4[1:]) / np.float32(2)).astype(np.float32)
    idx = np.searchsorted(bounds, scaled, side="left").astype(np.uint8)
    if idx.size % 2:
        idx = np.concatenate([idx, np.array([7], np.uint8)])  # bnb pads with 0.0 → code 7
    packed = (idx[0::2] << 4) | idx[1::2]
    return packed.astype(np.uint8), absmax


def blockwise8(x, code, blocksize=256):
    """bitsandbytes' CPU `quantize_blockwise` (fp32): a 65536-entry table maps the normalised
    value to the code index whose midpoint interval holds the table point."""
    mids = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
    pts = (np.float32(-1.0) + (np.float32(2.0) * np.arange(65536, dtype=np.float32)) / np.float32(65535)).astype(np.float32)
    lut = np.searchsorted(mids, pts, side="left").astype(np.uint8)  # count of midpoints < point
    n = x.size
    nb = -(-n // blocksize)
    q = np.zeros(n, np.uint8)
    am = np.zeros(nb, np.float32)
    for b in range(nb):
        blk = x[b * blocksize : (b + 1) * blocksize].astype(np.float32)
        a = np.float32(np.abs(blk).max())
        am[b] = a
        if a == 0:
            continue  # all-zero block: index 0
        v = np.clip(blk * (np.float32(1.0) / a), -1, 1).astype(np.float32)
        t = ((v + np.float32(1.0)) * np.float32(0.5)).astype(np.float32)
        t = (t * np.float32(65535)).astype(np.float32)
        t = (t + np.float32(0.5)).astype(np.float32)
        q[b * blocksize : b * blocksize + blk.size] = lut[t.astype(np.uint16)]
    return q, am


def mean_f32(x):
    """`torch.mean` of an fp32 vector (torch's cascade summation); without torch the f64 mean,
    which can differ from it in the last bit."""
    try:
        import torch

        return np.float32(torch.from_numpy(x).mean().item())
    except ImportError:
        return np.float32(x.astype(np.float64).mean())


def nf4_reference(w, code8):
    packed, absmax = nf4_quantize(w)
    offset = mean_f32(absmax)
    qabs, absmax2 = blockwise8((absmax - offset).astype(np.float32), code8)
    deq_abs = np.empty_like(absmax)
    for i in range(absmax.size):
        deq_abs[i] = np.float32(code8[qabs[i]] * absmax2[i // 256]) + offset
    n = w.size
    idx = np.empty(packed.size * 2, np.uint8)
    idx[0::2] = packed >> 4
    idx[1::2] = packed & 15
    vals = NF4[idx[:n]]
    deq = (vals * np.repeat(deq_abs, 64)[:n]).astype(np.float32).reshape(w.shape)
    return dict(packed=packed, absmax_q=qabs, absmax2=absmax2, offset=offset, dequant=deq, absmax=absmax)


def int8_reference(w):
    stats = np.abs(w).max(axis=1).astype(np.float32)
    scale = (np.float32(127.0) / stats).astype(np.float32)
    q = np.round((w * scale[:, None]).astype(np.float32)).astype(np.int8)
    deq = ((q.astype(np.float32) * stats[:, None]) * np.float32(1.0 / 127.0)).astype(np.float32)
    return dict(q=q, stats=stats, dequant=deq)


def bnb_reference(w):
    import torch
    import bitsandbytes.functional as F

    t = torch.from_numpy(w)
    packed, st = F.quantize_4bit(t, blocksize=64, compress_statistics=True, quant_type="nf4")
    deq = F.dequantize_4bit(packed, st)
    q8, stats, _ = F.int8_vectorwise_quant(t.clone())
    deq8 = F.int8_vectorwise_dequant(q8, stats)
    return dict(
        packed=packed.reshape(-1).numpy(),
        absmax_q=st.absmax.numpy(),
        absmax2=st.state2.absmax.numpy(),
        offset=np.float32(st.offset.item()),
        code8=st.state2.code.numpy(),
        dequant=deq.numpy(),
        q=q8.numpy(),
        stats=stats.numpy(),
        dequant8=deq8.numpy(),
    )


def cases():
    rng = np.random.default_rng(7)
    # 260 NF4 blocks: two double-quantization blocks, the second partial.
    a = (rng.standard_normal((20, 832)) * 0.02).astype(np.float32)
    a[3, 64:128] = 0.0  # an all-zero block
    a[5, 7] = 0.5  # an outlier
    # 11 rows x 70: the last NF4 block is partial (770 = 12·64 + 2), odd-free packing.
    b = (rng.standard_normal((11, 70)) * rng.uniform(0.001, 1.0, (11, 1))).astype(np.float32)
    return {"a": a, "b": b}


def main():
    os.makedirs(OUT, exist_ok=True)
    try:
        import bitsandbytes  # noqa: F401

        have_bnb = True
    except ImportError:
        have_bnb = False
    code8 = dynamic_map()
    meta = {"bitsandbytes": None, "cases": {}}
    if have_bnb:
        import bitsandbytes

        meta["bitsandbytes"] = bitsandbytes.__version__
    code8.astype("<f4").tofile(os.path.join(OUT, "dynamic_map.f32"))
    for name, w in cases().items():
        ref = nf4_reference(w, code8)
        r8 = int8_reference(w)
        if have_bnb:
            b = bnb_reference(w)
            assert np.array_equal(b["code8"].view(np.uint32), code8.view(np.uint32)), "dynamic map"
            assert np.array_equal(b["packed"], ref["packed"]), f"{name}: packed"
            assert np.array_equal(b["absmax_q"], ref["absmax_q"]), f"{name}: absmax_q"
            assert np.array_equal(b["absmax2"].view(np.uint32), ref["absmax2"].view(np.uint32))
            assert b["offset"].view(np.uint32) == ref["offset"].view(np.uint32), f"{name}: offset"
            assert np.array_equal(b["dequant"].view(np.uint32), ref["dequant"].view(np.uint32))
            assert np.array_equal(b["q"], r8["q"]), f"{name}: int8"
            assert np.array_equal(b["stats"].view(np.uint32), r8["stats"].view(np.uint32))
            assert np.array_equal(b["dequant8"].view(np.uint32), r8["dequant"].view(np.uint32))
        p = lambda s: os.path.join(OUT, f"{name}.{s}")  # noqa: E731
        w.astype("<f4").tofile(p("weight.f32"))
        ref["packed"].tofile(p("packed.u8"))
        ref["absmax_q"].tofile(p("absmax_q.u8"))
        ref["absmax2"].astype("<f4").tofile(p("absmax2.f32"))
        ref["dequant"].astype("<f4").tofile(p("dequant.f32"))
        r8["q"].tofile(p("int8.i8"))
        r8["stats"].astype("<f4").tofile(p("int8_stats.f32"))
        r8["dequant"].astype("<f4").tofile(p("int8_dequant.f32"))
        meta["cases"][name] = {
            "shape": list(w.shape),
            "offset_bits": int(ref["offset"].view(np.uint32)),
        }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {OUT} (checked against bitsandbytes: {have_bnb})")


if __name__ == "__main__":
    main()

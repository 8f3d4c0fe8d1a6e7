//! NF4 weights on a GPU (feature `cuda`): the packed parts uploaded once per weight and device,
//! dequantized there by the `nf4` kernel whenever a product needs the dense weight
//! ([`super::QuantWeight`]'s `Dequantize::dense_on`). The CPU path never comes here.

use super::{QuantWeight, dynamic_map};
use crate::error::Result;
use crate::ops::dequant::Nf4Parts;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The packed parts of an NF4 weight on a device, uploaded once. Keyed by the weight's `Arc`,
/// which the entry also holds, so the address cannot be reused by another weight.
fn device_parts(w: &Arc<QuantWeight>, device: &Device) -> Result<Option<Nf4Parts>> {
    type Cache = Mutex<HashMap<(usize, String), (Arc<QuantWeight>, Nf4Parts)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let QuantWeight::Nf4(q) = &**w else {
        return Ok(None);
    };
    let key = (Arc::as_ptr(w) as usize, format!("{:?}", device.location()));
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, parts)) = cache.get(&key) {
        return Ok(Some(parts.clone()));
    }
    let parts = Nf4Parts::new(
        q.rows,
        q.cols,
        &q.packed,
        &q.absmax_q,
        &q.absmax2,
        &dynamic_map(),
        q.offset,
        device,
    )?;
    cache.insert(key, (w.clone(), parts.clone()));
    Ok(Some(parts))
}

/// The dense NF4 weight `[out, in]` as `dtype` on a GPU, dequantized by the kernel; `None` for
/// int8 (no kernel yet: the caller uploads the host dequantization).
pub(crate) fn nf4_dense(
    w: &Arc<QuantWeight>,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    match device_parts(w, device)? {
        Some(parts) => Ok(Some(parts.dequantize(dtype)?)),
        None => Ok(None),
    }
}

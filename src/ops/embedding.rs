//! Token embedding: gather rows of the [vocab, hidden] table.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn embed(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (vocab, hidden) = (table.shape()[0], table.row_len());
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        if id as usize >= vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {id} is outside the vocabulary (size {vocab})"
            )));
        }
        out.extend_from_slice(table.row(id as usize));
    }
    Tensor::new(vec![ids.len(), hidden], out)
}

//! Row-parallel matrix products for hosts without candle's own thread pool (the multi-threaded
//! wasm build, whose threads are JS workers running a rayon pool). Off unless a host enables it;
//! native builds keep candle's pool. Splitting by output rows leaves every output element the
//! same dot product, so results do not depend on the thread count.

use candle_core::Tensor;

use crate::weights::Matrix;

/// `x · wᵀ` split over the enabled pool, or `None` when row parallelism is off (the caller then
/// uses candle's product).
pub(crate) fn matmul(_x: &Tensor, _w: &Matrix) -> Option<candle_core::Result<Tensor>> {
    None
}

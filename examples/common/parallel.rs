//! The parallelism flags of examples/generate and examples/serve (SGLang's names), flattened
//! into each one's arguments.

use clap::Args;

#[derive(Args, Debug)]
pub struct ParallelArgs {
    /// Tensor-parallel size over all nodes (CUDA): one process drives this node's GPUs
    /// --base-gpu-id.. of the group.
    #[arg(long, alias = "tp-size", alias = "tensor-parallel-size", default_value_t = 1)]
    pub tp: usize,
    /// First GPU ordinal this node drives (of the TP group).
    #[arg(long, default_value_t = 0)]
    pub base_gpu_id: usize,
    /// Routed experts split whole over the TP ranks (expert parallelism).
    #[arg(long)]
    pub enable_ep_moe: bool,
    /// Expert-parallel size: 1 or the TP size (> 1 turns expert parallelism on).
    #[arg(long, default_value_t = 1)]
    pub ep_size: usize,
    /// Number of nodes (serve: one node only; generate runs multi-node).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's rank among --nnodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// host:port of node 0 (the rendezvous), with --nnodes > 1 (not implemented yet for serve).
    #[arg(long)]
    pub dist_init_addr: Option<String>,
    /// Seconds to wait for every node at the rendezvous.
    #[arg(long, default_value = "300")]
    pub dist_timeout: String,
    /// Data-parallel attention for DeepSeek models over the TP ranks (all heads on every GPU,
    /// each attending for its own requests out of its own KV pool; FFN split; one node).
    #[arg(long)]
    pub enable_dp_attention: bool,
    /// Data-parallel size: 1, or --tp with --enable-dp-attention (plain replicas are refused).
    #[arg(long, alias = "dp-size", alias = "data-parallel-size", default_value_t = 1)]
    pub dp: usize,
}

#[cfg(any(feature = "cuda", feature = "hip"))]
impl ParallelArgs {
    /// The communicator group these flags describe (`--dist-timeout` parsed).
    pub fn group_config(&self) -> dsv3::Result<dsv3::dist::GroupConfig> {
        Ok(dsv3::dist::GroupConfig {
            tp: self.tp,
            base_gpu_id: self.base_gpu_id,
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            dist_init_addr: self.dist_init_addr.clone(),
            timeout: dsv3::dist::rendezvous::parse_timeout(&self.dist_timeout)?,
        })
    }

    /// How the routed experts and attention are split over the group.
    pub fn splits(&self) -> (dsv3::model::shard::MoeSplit, dsv3::model::shard::AttnSplit) {
        use dsv3::model::shard::{AttnSplit, MoeSplit};
        let moe = if self.enable_ep_moe || self.ep_size > 1 { MoeSplit::Expert } else { MoeSplit::Tensor };
        let attn = if self.enable_dp_attention { AttnSplit::Data } else { AttnSplit::Heads };
        (moe, attn)
    }
}

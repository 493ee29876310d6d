//! The data-parallel parts of the fine-tuning loop (see [`crate::dist`] for the process group).
//!
//! - The global batch is the one a single process would take: the same seeded shuffle on every
//!   rank, cut into batches of `batch_size`; rank r trains on rows r, r + W, r + 2W, … of each
//!   batch (`DistributedSampler`'s strided split, taken per batch so that no row is repeated
//!   to pad and the last, short batch is still the same batch).
//! - Each rank's loss is its rows' mean times its share of the batch; the gradients are summed
//!   over the ranks in buckets, so every rank steps with the whole batch's mean gradient, the
//!   same as one process (up to the order of float additions). Whether a gradient reached a
//!   parameter, a non-finite local loss and the step's loss and accuracy sums travel with them,
//!   so every rank takes (or skips) the same step and keeps the same epoch totals.
//! - BatchNorm is local: each rank normalises with its own rows' statistics; after every step
//!   rank 0's running statistics are broadcast (as DDP's `broadcast_buffers`).
//! - At the start every variable is broadcast from rank 0, after each rank has read the same
//!   checkpoint when resuming (checked).
//! - Passes over whole row sets are split, not repeated: validation scores each rank's share
//!   and all-reduces the sums; the final logits of the training and validation rows come from
//!   each rank's contiguous slice, all-gathered in order.

use tch::{Kind, Reduction, Tensor};

use super::finetune::Learner;
use super::optim::Optimizer;
use crate::dist::Group;
use crate::error::{Error, Result};

pub struct Ddp {
    pub g: Group,
}

/// Loss sum, correct count and rows seen.
pub type Sums = (f64, i64, usize);

impl Ddp {
    /// Joins the launch described by the environment; `None` for a single process.
    pub fn from_env() -> Result<Option<Ddp>> {
        Ok(Group::from_env()?.map(|g| Ddp { g }))
    }

    /// This rank's rows of a global batch.
    pub fn share(&self, rows: &[usize]) -> Vec<usize> {
        rows.iter().skip(self.g.rank).step_by(self.g.world).copied().collect()
    }

    /// The dropout seed of this rank (rank 0 keeps the single-process one).
    pub fn seed(&self, seed: u64) -> u64 {
        seed ^ (self.g.rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Checks every rank starts from rank 0's position (`epoch, batch, step`), then copies rank
    /// 0's variables to the others.
    pub fn start(&self, vs: &tch::nn::VarStore, position: [usize; 3]) -> Result<()> {
        let here = Tensor::from_slice(&position.map(|p| p as i64));
        let there = here.copy();
        self.g.broadcast(std::slice::from_ref(&there), 0, "start-position broadcast")?;
        let there = Vec::<i64>::try_from(&there)?;
        if there.iter().zip(&position).any(|(&a, &b)| a != b as i64) {
            return Err(Error::Usage(format!(
                "rank {}: this rank would start at epoch {}, batch {} but rank 0 at epoch {}, batch {}: every rank must resume from the same run directory (a shared file system)",
                self.g.rank,
                position[0] + 1,
                position[1],
                there[0] + 1,
                there[1]
            )));
        }
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let ts: Vec<Tensor> = vars.into_iter().map(|(_, t)| t).collect();
        self.g.bucketed(&ts, Some(0), "initial weights broadcast")
    }

    /// Sums the held gradients over the ranks (a parameter no rank reached keeps none), with
    /// this rank's non-finite flag and step sums. Returns whether any rank's loss was
    /// non-finite, and the step's sums over every rank.
    pub fn reduce_step(&self, opt: &mut Optimizer, bad: bool, sums: Sums) -> Result<(bool, Sums)> {
        let (params, grads) = opt.params_and_grads();
        let n = params.len();
        let mut meta = vec![0f64; n + 4];
        let mut ts: Vec<Tensor> = Vec::with_capacity(n + 1);
        for (i, (p, g)) in params.iter().zip(grads.iter()).enumerate() {
            ts.push(match g {
                Some(g) => {
                    meta[i] = 1.0;
                    g.shallow_clone()
                }
                None => p.zeros_like(),
            });
        }
        meta[n..].copy_from_slice(&[bad as u8 as f64, sums.0, sums.1 as f64, sums.2 as f64]);
        ts.push(Tensor::from_slice(&meta));
        self.g.bucketed(&ts, None, "gradient all-reduce")?;
        let meta = Vec::<f64>::try_from(&ts[n])?;
        for (i, (held, t)) in grads.iter_mut().zip(ts).enumerate() {
            *held = (meta[i] > 0.0).then_some(t);
        }
        Ok((meta[n] > 0.0, (meta[n + 1], meta[n + 2].round() as i64, meta[n + 3].round() as usize)))
    }

    /// Synchronised BatchNorm for the rest of the run. Every rank must run each training
    /// forward pass, so every global batch (the last, short one too) needs a row per rank.
    pub fn sync_bn(&self, rows: usize, batch_size: usize) -> Result<crate::dist::SyncBnGuard> {
        let last = rows % batch_size;
        if batch_size < self.g.world || (last > 0 && last < self.g.world) {
            return Err(Error::Usage(format!(
                "synchronised BatchNorm with {} ranks needs every batch to hold at least {} rows: batch size {batch_size}, {rows} training rows (last batch {last})",
                self.g.world, self.g.world
            )));
        }
        Ok(self.g.sync_bn())
    }

    /// Rank 0's BatchNorm running statistics to every rank.
    pub fn sync_buffers(&self, buffers: &[Tensor]) -> Result<()> {
        if buffers.is_empty() {
            return Ok(());
        }
        self.g.bucketed(buffers, Some(0), "BatchNorm statistics broadcast")
    }

    /// Eval-mode logits of `rows`, in order, on every rank: each rank runs its contiguous slice
    /// ([`crate::learn::shared_pass::slice_of`]) and the slices are all-gathered.
    pub fn eval_logits<L: Learner>(&self, sess: &L, rows: &[usize], batch_size: usize) -> Result<Tensor> {
        let mine = &rows[crate::learn::shared_pass::slice_of(rows.len(), self.g.world, self.g.rank)];
        let logits = sess.eval_logits(mine, batch_size)?.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
        Ok(Tensor::cat(&self.g.all_gather_rows(&logits, "final logits all-gather")?, 0))
    }

    /// Validation loss and accuracy over `rows`, each rank scoring its share.
    pub fn val_scores<L: Learner>(&self, sess: &L, rows: &[usize], batch_size: usize) -> Result<(f64, f64)> {
        let mine = self.share(rows);
        let (mut loss, mut correct) = (0.0, 0.0);
        if !mine.is_empty() {
            let logits = sess.eval_logits(&mine, batch_size)?;
            let idx = Tensor::from_slice(&mine.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(sess.labels().device());
            let y = sess.labels().index_select(0, &idx);
            loss = logits.cross_entropy_loss::<&Tensor>(&y, None, Reduction::Sum, -100, 0.0).double_value(&[]);
            correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as f64;
        }
        let t = self.g.sum_f64(&[loss, correct, mine.len() as f64], "validation scores")?;
        Ok((t[0] / t[2].max(1.0), t[1] / t[2].max(1.0)))
    }
}

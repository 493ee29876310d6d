//! Synchronised BatchNorm over two ranks (Gloo on loopback) against one process's BatchNorm on
//! the whole batch: outputs, input gradients, weight and bias gradients (summed over the ranks,
//! as the data-parallel step does) and running statistics agree within 1e-5.
//!
//! The same ranks check the all-gather of rows that sharing a pass over the data relies on:
//! different row counts (none on one rank), rank order, exact values, bytes.
//!
//! The ranks are this test binary run again, as child processes, on the `rank_worker` test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use headstart::dist::{sync_batch_norm, Env, Group};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

const WORLD: usize = 2;
const ROWS: i64 = 6;

/// The global batch, the BatchNorm and a projection that makes the loss depend on every output.
fn setup() -> (nn::VarStore, nn::BatchNorm, Tensor, Tensor) {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = nn::batch_norm2d(vs.root() / "bn", 3, Default::default());
    tch::no_grad(|| {
        bn.ws.as_ref().unwrap().shallow_clone().copy_(&(Tensor::rand([3], (Kind::Float, Device::Cpu)) + 0.5));
        bn.bs.as_ref().unwrap().shallow_clone().copy_(&Tensor::randn([3], (Kind::Float, Device::Cpu)));
    });
    let x = Tensor::randn([ROWS, 3, 4, 5], (Kind::Float, Device::Cpu)) * 2.0 + 1.0;
    let proj = Tensor::randn([ROWS, 3, 4, 5], (Kind::Float, Device::Cpu));
    (vs, bn, x, proj)
}

fn rows_of(rank: usize) -> Tensor {
    Tensor::from_slice(&(0..ROWS).filter(|r| *r as usize % WORLD == rank).collect::<Vec<_>>())
}

/// One rank: its rows through synchronised BatchNorm, backward, weight gradients summed.
#[test]
fn rank_worker() {
    let Ok(dir) = std::env::var("SYNC_BN_OUT") else { return };
    let env = Env::from_env().unwrap().expect("WORLD_SIZE is set");
    let g = Group::join(&env, Duration::from_secs(60)).unwrap();
    let (_vs, bn, x, proj) = setup();
    let idx = rows_of(env.rank);
    let x = x.index_select(0, &idx).set_requires_grad(true);
    let _guard = g.sync_bn();
    let y = sync_batch_norm(&x, &bn, 0.1, 1e-5).expect("synchronised BatchNorm is on");
    g.check_sync_bn().unwrap();
    (&y * proj.index_select(0, &idx)).sum(Kind::Float).backward();
    let (w, b) = (bn.ws.as_ref().unwrap(), bn.bs.as_ref().unwrap());
    let grads = [w.grad(), b.grad()];
    g.allreduce_sum(&grads, "weight gradients").unwrap();
    let out = [("y", y.detach()), ("gx", x.grad()), ("gw", grads[0].shallow_clone()), ("gb", grads[1].shallow_clone())];
    let mut all: Vec<(&str, Tensor)> = out.into();
    all.push(("running_mean", bn.running_mean.shallow_clone()));
    all.push(("running_var", bn.running_var.shallow_clone()));
    Tensor::save_multi(&all, Path::new(&dir).join(format!("rank{}.ot", env.rank))).unwrap();
    gather_checks(&g);
}

/// Rank 0 gathers 3 rows, rank 1 none; then 1 row against 2; then bytes.
fn gather_checks(g: &Group) {
    let rows = |n: i64, base: f32| (Tensor::arange(n * 2, (Kind::Float, Device::Cpu)) + base as f64).view([n, 2]);
    let mine = if g.rank == 0 { rows(3, 0.5) } else { rows(0, 0.0) };
    let got = g.all_gather_rows(&mine, "test gather").unwrap();
    assert_eq!(got.len(), WORLD);
    assert!(got[0].equal(&rows(3, 0.5)), "{:?}", got[0]);
    assert_eq!(got[1].size(), [0, 2]);
    let mine = if g.rank == 0 { rows(1, 10.0) } else { rows(2, 20.0) };
    let got = g.all_gather_rows(&mine, "test gather").unwrap();
    assert!(got[0].equal(&rows(1, 10.0)) && got[1].equal(&rows(2, 20.0)), "{got:?}");
    let bytes = g.all_gather_bytes(format!("from rank {}", g.rank).as_bytes(), "test bytes").unwrap();
    assert_eq!(bytes, [b"from rank 0".to_vec(), b"from rank 1".to_vec()]);
}

fn close(name: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size(), "{name}");
    let d = (a - b).abs().max().double_value(&[]);
    eprintln!("{name}: largest difference {d:e}");
    assert!(d <= 1e-5, "{name} differs by {d}");
}

#[test]
fn two_ranks_normalise_as_one_process_on_the_whole_batch() {
    if std::env::var("SYNC_BN_OUT").is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..WORLD)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "rank_worker", "--nocapture", "--test-threads", "1"])
                .env("SYNC_BN_OUT", tmp.path())
                .env("WORLD_SIZE", WORLD.to_string())
                .env("RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }

    // One process, the whole batch.
    let (_vs, bn, x, proj) = setup();
    let x = x.set_requires_grad(true);
    let y = bn.forward_t(&x, true);
    (&y * &proj).sum(Kind::Float).backward();
    let (w, b) = (bn.ws.as_ref().unwrap(), bn.bs.as_ref().unwrap());
    for r in 0..WORLD {
        let got: std::collections::HashMap<String, Tensor> = Tensor::load_multi(tmp.path().join(format!("rank{r}.ot"))).unwrap().into_iter().collect();
        let idx = rows_of(r);
        close("output", &got["y"], &y.detach().index_select(0, &idx));
        close("input gradient", &got["gx"], &x.grad().index_select(0, &idx));
        close("weight gradient", &got["gw"], &w.grad());
        close("bias gradient", &got["gb"], &b.grad());
        close("running mean", &got["running_mean"], &bn.running_mean);
        close("running variance", &got["running_var"], &bn.running_var);
    }
    // Not trivially equal: one rank's rows alone give other statistics.
    let own = bn.forward_t(&x.detach().index_select(0, &rows_of(0)), true);
    assert!((own - y.detach().index_select(0, &rows_of(0))).abs().max().double_value(&[]) > 1e-2);
}

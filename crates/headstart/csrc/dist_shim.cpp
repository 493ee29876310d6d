// C interface to libtorch's c10d: a TCPStore for rendezvous and a process group (Gloo on CPU;
// NCCL on CUDA when built with HEADSTART_NCCL) for all-reduce, broadcast, all-gather and barrier.
//
// Every function that can fail returns NULL on success, or an error message allocated with
// malloc that the caller frees with hs_free_error. Tensors are passed as `at::Tensor*`, the
// handle type of the tch crate.

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <c10/util/Logging.h>
#include <torch/autograd.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef HEADSTART_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

// The Gloo names are only declared (see gloo_decl/). ProcessGroupGloo is allocated here by
// make_intrusive, so its size must be the one libtorch was built with: 488 bytes in torch
// 2.11 on x86-64 Linux (read from the allocation in ProcessGroupGloo::split). Every Gloo-typed
// member is a smart pointer, whose size does not depend on the Gloo declarations.
static_assert(sizeof(c10d::ProcessGroupGloo) == 488, "ProcessGroupGloo layout differs from the one this shim was checked against");

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  // Where the group's collectives run: tensors elsewhere are staged through a copy here.
  at::Device device;
};

char* message(const std::string& m) {
  char* out = static_cast<char*>(std::malloc(m.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, m.c_str(), m.size() + 1);
  }
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensors(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) {
    v.push_back(*ts[i]);
  }
  return v;
}

// Waits for one collective, rethrowing its failure (a lost peer, a timeout).
void finish(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  if (!work->wait(std::chrono::milliseconds(timeout_ms))) {
    throw std::runtime_error("collective did not complete in " + std::to_string(timeout_ms) + " ms");
  }
}

void allreduce_one(Group* g, const at::Tensor& t, int64_t timeout_ms) {
  const bool staged = t.device() != g->device;
  std::vector<at::Tensor> one{staged ? t.to(g->device) : t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  finish(g->backend->allreduce(one, o), timeout_ms);
  if (staged) {
    t.copy_(one[0]);
  }
}

// BatchNorm over the union of every rank's batch (PyTorch's SyncBatchNorm): the per-channel
// sums, sums of squares and counts are all-reduced in the forward pass; in the backward pass,
// the sums of the output gradient and of its product with the normalised input are, so that
// each rank's input gradient is the one a single process would get for the whole batch. The
// weight and bias gradients stay local: the data-parallel gradient all-reduce sums them.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static std::vector<int64_t> reduce_dims(const at::Tensor& x) {
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < x.dim(); d++) {
      dims.push_back(d);
    }
    return dims;
  }

  static std::vector<int64_t> channel_shape(const at::Tensor& x) {
    std::vector<int64_t> shape(x.dim(), 1);
    shape[1] = x.size(1);
    return shape;
  }

  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      at::Tensor x,
      at::Tensor weight,
      at::Tensor bias,
      at::Tensor running_mean,
      at::Tensor running_var,
      double momentum,
      double eps,
      int64_t group,
      int64_t timeout_ms) {
    auto* g = reinterpret_cast<Group*>(group);
    const int64_t c = x.size(1);
    const auto dims = reduce_dims(x);
    auto stats = at::cat({x.sum(dims, false, at::kDouble), (x * x).sum(dims, false, at::kDouble), at::full({1}, static_cast<double>(x.numel() / std::max<int64_t>(c, 1)), at::kDouble)});
    allreduce_one(g, stats, timeout_ms);
    const double n = stats[2 * c].item<double>();
    TORCH_CHECK(n > 1, "synchronised BatchNorm needs more than one value per channel over all ranks, got ", n);
    auto mean = stats.slice(0, 0, c) / n;
    auto var = (stats.slice(0, c, 2 * c) / n - mean * mean).clamp_min(0);
    {
      at::NoGradGuard no_grad;
      if (running_mean.defined()) {
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()) * momentum);
      }
      if (running_var.defined()) {
        running_var.mul_(1 - momentum).add_((var * (n / (n - 1))).to(running_var.scalar_type()) * momentum);
      }
    }
    const auto shape = channel_shape(x);
    auto mean_x = mean.to(x.scalar_type()).view(shape);
    auto invstd_x = (var + eps).rsqrt().to(x.scalar_type()).view(shape);
    auto y = (x - mean_x) * invstd_x;
    if (weight.defined()) {
      y = y * weight.view(shape) + bias.view(shape);
    }
    ctx->save_for_backward({x, weight, mean_x, invstd_x});
    ctx->saved_data["n"] = n;
    ctx->saved_data["group"] = group;
    ctx->saved_data["timeout"] = timeout_ms;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto x = saved[0], weight = saved[1], mean_x = saved[2], invstd_x = saved[3];
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    const double n = ctx->saved_data["n"].toDouble();
    const auto dims = reduce_dims(x);
    const auto shape = channel_shape(x);
    const int64_t c = x.size(1);
    auto gy = grads[0].contiguous();
    auto xhat = (x - mean_x) * invstd_x;
    auto sum_dy = gy.sum(dims);
    auto sum_dy_xhat = (gy * xhat).sum(dims);
    auto both = at::cat({sum_dy, sum_dy_xhat}).contiguous();
    allreduce_one(g, both, ctx->saved_data["timeout"].toInt());
    auto scale = weight.defined() ? invstd_x * weight.view(shape) : invstd_x;
    auto gx = scale * (gy - both.slice(0, 0, c).view(shape) / n - xhat * both.slice(0, c, 2 * c).view(shape) / n);
    at::Tensor none;
    return {gx, weight.defined() ? sum_dy_xhat : none, weight.defined() ? sum_dy : none, none, none, none, none, none, none};
  }
};

} // namespace

extern "C" {

void hs_free_error(char* e) {
  std::free(e);
}

// c10's log level from TORCH_CPP_LOG_LEVEL, as in PyTorch; unset, only errors are logged
// (c10d warns with a C++ backtrace on every socket a lost peer leaves broken, which the
// caller already reports as one error naming the lost rank).
void hs_init_logging() {
  c10::initLogging();
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
    FLAGS_caffe2_log_level = 2;
  }
}

// Rank 0 serves the store at `port` and waits for `world` clients; the others connect to
// `host:port`. Blocks until every rank has arrived or `timeout_ms` passed.
char* hs_store_new(const char* host, int port, int world, int is_server, int64_t timeout_ms, void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = is_server != 0;
    o.numWorkers = static_cast<std::size_t>(world);
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto s = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    *out = new Store{s};
  });
}

void hs_store_free(void* s) {
  delete static_cast<Store*>(s);
}

// Adds `delta` to the counter `key` (created at 0) and returns its new value.
char* hs_store_add(void* s, const char* key, int64_t delta, int64_t* value) {
  return guarded([&] { *value = static_cast<Store*>(s)->store->add(std::string(key), delta); });
}

// A Gloo process group over the store, its keys under `prefix`. Collectives and connection
// set-up give up after `timeout_ms`.
char* hs_group_gloo_new(void* s, const char* prefix, int rank, int world, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), static_cast<Store*>(s)->store);
    auto options = c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(timeout_ms));
    c10::intrusive_ptr<c10d::Backend> pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    *out = new Group{pg, at::Device(at::kCPU)};
  });
}

#ifdef HEADSTART_NCCL
// An NCCL process group: this rank drives CUDA device `device` (its LOCAL_RANK), made current
// and bound to the group (so that barriers and communicator set-up use it).
char* hs_group_nccl_new(void* s, const char* prefix, int rank, int world, int device, int64_t timeout_ms, void** out) {
  return guarded([&] {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), static_cast<Store*>(s)->store);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
    pg->setBoundDeviceId(dev);
    *out = new Group{c10::intrusive_ptr<c10d::Backend>(pg), dev};
  });
}
#endif

void hs_group_free(void* g) {
  delete static_cast<Group*>(g);
}

// Sums each tensor in place over the ranks: one collective per tensor, all started before
// any is waited for.
char* hs_group_allreduce_sum(void* g, at::Tensor** ts, size_t n, int64_t timeout_ms) {
  return guarded([&] {
    auto& backend = static_cast<Group*>(g)->backend;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (size_t i = 0; i < n; i++) {
      std::vector<at::Tensor> one{*ts[i]};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      o.timeout = std::chrono::milliseconds(timeout_ms);
      works.push_back(backend->allreduce(one, o));
    }
    for (auto& w : works) {
      finish(w, timeout_ms);
    }
  });
}

// Copies each tensor of rank `root` into the same tensor of every other rank.
char* hs_group_broadcast(void* g, at::Tensor** ts, size_t n, int root, int64_t timeout_ms) {
  return guarded([&] {
    auto& backend = static_cast<Group*>(g)->backend;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors(ts, n)) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = std::chrono::milliseconds(timeout_ms);
      works.push_back(backend->broadcast(one, o));
    }
    for (auto& w : works) {
      finish(w, timeout_ms);
    }
  });
}

// Gathers every rank's `input` into `outputs[r]` (one per rank, each shaped and typed like
// `input`, allocated by the caller).
char* hs_group_allgather(void* g, at::Tensor* input, at::Tensor** outputs, size_t n, int64_t timeout_ms) {
  return guarded([&] {
    std::vector<std::vector<at::Tensor>> out{tensors(outputs, n)};
    std::vector<at::Tensor> in{*input};
    c10d::AllgatherOptions o;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    finish(static_cast<Group*>(g)->backend->allgather(out, in, o), timeout_ms);
  });
}

// Synchronised BatchNorm in training mode (see SyncBatchNorm); `*out` receives a new tensor.
// `weight`, `bias`, `running_mean` and `running_var` may be NULL.
char* hs_sync_batch_norm(
    void* g,
    at::Tensor* x,
    at::Tensor* weight,
    at::Tensor* bias,
    at::Tensor* running_mean,
    at::Tensor* running_var,
    double momentum,
    double eps,
    int64_t timeout_ms,
    at::Tensor** out) {
  return guarded([&] {
    auto opt = [](at::Tensor* t) { return t == nullptr ? at::Tensor() : *t; };
    auto y = SyncBatchNorm::apply(*x, opt(weight), opt(bias), opt(running_mean), opt(running_var), momentum, eps, reinterpret_cast<int64_t>(g), timeout_ms);
    *out = new at::Tensor(y);
  });
}

char* hs_group_barrier(void* g, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BarrierOptions o;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    finish(static_cast<Group*>(g)->backend->barrier(o), timeout_ms);
  });
}

} // extern "C"

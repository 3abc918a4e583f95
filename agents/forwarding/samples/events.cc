// events: a user event gating a chain of commands, wait lists, event
// callbacks, markers and barriers with wait lists, an out-of-order queue
// (where the device has one), event info and profiling queries.
//
// Callbacks run on the implementation's threads in an order nobody promises,
// so the sample collects (tag, status) pairs, waits until all expected
// callbacks have come, and digests them sorted.
//
//   1  user event U; write A (waits on U), kernel on A, marker; callbacks.
//      Ends with the queue flushed but NOT finished: the commands are still
//      held by U, so a checkpoint here has a pending user event to carry.
//   2  complete U; wait for the marker; event statuses, command types, queue
//      and context of each event; setting U twice fails
//   3  on an out-of-order queue: two independent chains joined by a barrier
//      with a wait list, a copy and a kernel after it, a marker at the end
//   4  on a profiling queue: a kernel waiting on an event of another queue,
//      a read waiting on it; profiling order; read A, B, C; digest
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "agents/forwarding/samples/sample.h"

namespace vgpu::forwarding::samples {
namespace {

constexpr char kSource[] = R"CL(
__kernel void advance(__global int* a, int by, uint n) {
  size_t i = get_global_id(0);
  if (i < n) a[i] = a[i] * 3 + by;
}
)CL";

constexpr cl_uint kN = 4096;

class CallbackLog {
 public:
  struct Tag {
    CallbackLog* log;
    int tag;
  };

  // Registers a CL_COMPLETE callback on `event` that records `tag`.
  void Watch(cl_event event, int tag) {
    tags_.push_back(Tag{this, tag});
    ++expected_;
    VGPU_CL_CHECK(clSetEventCallback(event, CL_COMPLETE, &CallbackLog::On,
                                     &tags_.back()));
  }

  // Waits until every watched callback has run; throws after 10 s.
  void WaitAll() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(10),
                      [&] { return entries_.size() >= expected_; })) {
      throw SampleFailure("only " + std::to_string(entries_.size()) + " of " +
                          std::to_string(expected_) +
                          " event callbacks came within 10 s");
    }
  }

  std::vector<std::pair<cl_int, cl_int>> Sorted() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<cl_int, cl_int>> v = entries_;
    std::sort(v.begin(), v.end());
    return v;
  }

 private:
  static void CL_CALLBACK On(cl_event, cl_int status, void* user) {
    Tag* t = static_cast<Tag*>(user);
    std::lock_guard<std::mutex> lock(t->log->mu_);
    t->log->entries_.emplace_back(t->tag, status);
    t->log->cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<cl_int, cl_int>> entries_;
  std::deque<Tag> tags_;  // stable addresses for the callbacks' user data
  size_t expected_ = 0;
};

void Step(cl_command_queue q, cl_kernel k, cl_mem buf, cl_int by,
          const std::vector<cl_event>& wait, cl_event* out) {
  const cl_uint n = kN;
  SetArg(k, 0, buf);
  SetArg(k, 1, by);
  SetArg(k, 2, n);
  const size_t global = kN, local = 64;
  VGPU_CL_CHECK(clEnqueueNDRangeKernel(
      q, k, 1, nullptr, &global, &local, static_cast<cl_uint>(wait.size()),
      wait.empty() ? nullptr : wait.data(), out));
}

void HostStep(std::vector<cl_int>& a, cl_int by) {
  for (cl_int& v : a) {
    v = static_cast<cl_int>(static_cast<cl_uint>(v) * 3u +
                            static_cast<cl_uint>(by));
  }
}

// Digests the command type and status of `e`, and whether it belongs to
// queue `q` and context `ctx` (handles themselves differ between runs).
void DigestEvent(Digest& d, cl_event e, cl_command_queue q, cl_context ctx) {
  d.Pod(EventInfo<cl_command_type>(e, CL_EVENT_COMMAND_TYPE));
  d.Pod(EventInfo<cl_int>(e, CL_EVENT_COMMAND_EXECUTION_STATUS));
  d.Pod(static_cast<cl_int>(
      EventInfo<cl_command_queue>(e, CL_EVENT_COMMAND_QUEUE) == q));
  d.Pod(static_cast<cl_int>(EventInfo<cl_context>(e, CL_EVENT_CONTEXT) == ctx));
}

}  // namespace

void RunEvents(SampleRun& run) {
  cl_context ctx = run.context();
  cl_command_queue q = run.queue();
  Digest& d = run.digest();
  CallbackLog callbacks;
  cl_int err = CL_SUCCESS;

  // Step 1.
  Rng rng(0x5eed0004);
  std::vector<cl_int> init_a(kN), init_b(kN), init_c(kN);
  for (cl_uint i = 0; i < kN; ++i) {
    init_a[i] = rng.Int(-100000, 100000);
    init_b[i] = rng.Int(-100000, 100000);
    init_c[i] = rng.Int(-100000, 100000);
  }
  Program program(BuildProgram(ctx, run.device(), kSource));
  Kernel k(CreateKernel(program.get(), "advance"));
  Kernel k2(CreateKernel(program.get(), "advance"));  // for the second chain
  const size_t bytes = kN * sizeof(cl_int);
  Mem a(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem b(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));
  Mem c(CreateBuffer(ctx, CL_MEM_READ_WRITE, bytes));

  Event user(clCreateUserEvent(ctx, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateUserEvent");
  d.Pod(EventInfo<cl_int>(user.get(), CL_EVENT_COMMAND_EXECUTION_STATUS));
  d.Pod(EventInfo<cl_command_type>(user.get(), CL_EVENT_COMMAND_TYPE));
  Event e_write, e_kernel, e_marker;
  cl_event gate = user.get();
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q, a.get(), CL_FALSE, 0, bytes,
                                     init_a.data(), 1, &gate, e_write.out()));
  Step(q, k.get(), a.get(), 1, {e_write.get()}, e_kernel.out());
  cl_event k_ev = e_kernel.get();
  VGPU_CL_CHECK(clEnqueueMarkerWithWaitList(q, 1, &k_ev, e_marker.out()));
  callbacks.Watch(user.get(), 0);
  callbacks.Watch(e_write.get(), 1);
  callbacks.Watch(e_kernel.get(), 2);
  callbacks.Watch(e_marker.get(), 3);
  // Held by U: queued or submitted, never running or complete. Which of the
  // two is the implementation's business, so only "not started" is digested.
  const cl_int held =
      EventInfo<cl_int>(e_write.get(), CL_EVENT_COMMAND_EXECUTION_STATUS);
  Expect(held == CL_QUEUED || held == CL_SUBMITTED,
         "a write gated on an incomplete user event has not started (status " +
             std::to_string(held) + ")");
  d.Pod(static_cast<cl_int>(held > CL_RUNNING));
  VGPU_CL_CHECK(clFlush(q));
  run.EndStep();

  // Step 2.
  VGPU_CL_CHECK(clSetUserEventStatus(user.get(), CL_COMPLETE));
  cl_event m_ev = e_marker.get();
  VGPU_CL_CHECK(clWaitForEvents(1, &m_ev));
  VGPU_CL_CHECK(clFinish(q));
  callbacks.WaitAll();
  DigestEvent(d, user.get(), nullptr, ctx);
  DigestEvent(d, e_write.get(), q, ctx);
  DigestEvent(d, e_kernel.get(), q, ctx);
  DigestEvent(d, e_marker.get(), q, ctx);
  const cl_int twice = clSetUserEventStatus(user.get(), CL_COMPLETE);
  Expect(
      twice == CL_INVALID_OPERATION,
      "setting a user event's status twice gives CL_INVALID_OPERATION, got " +
          ClErrorText(twice));
  d.Pod(twice);
  run.EndStep();

  // Step 3.
  const cl_command_queue_properties supported =
      DeviceInfo<cl_command_queue_properties>(run.device(),
                                              CL_DEVICE_QUEUE_PROPERTIES);
  const bool ooo = (supported & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0;
  Queue q2(clCreateCommandQueue(
      ctx, run.device(), ooo ? CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE : 0,
      &err));
  VGPU_CL_CHECK_ERR(err, "clCreateCommandQueue(out-of-order)");
  Event e_wb, e_wc, e1, e2, e_bar, e3, e4, e_end;
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q2.get(), b.get(), CL_FALSE, 0, bytes,
                                     init_b.data(), 0, nullptr, e_wb.out()));
  VGPU_CL_CHECK(clEnqueueWriteBuffer(q2.get(), c.get(), CL_FALSE, 0, bytes,
                                     init_c.data(), 0, nullptr, e_wc.out()));
  // Two independent chains, through two kernel objects of one program.
  Step(q2.get(), k.get(), b.get(), 2, {e_wb.get()}, e1.out());
  Step(q2.get(), k2.get(), c.get(), 5, {e_wc.get()}, e2.out());
  cl_event join[2] = {e1.get(), e2.get()};
  VGPU_CL_CHECK(clEnqueueBarrierWithWaitList(q2.get(), 2, join, e_bar.out()));
  // Copy the first half of B over C's first half, after the barrier.
  cl_event bar_ev = e_bar.get();
  VGPU_CL_CHECK(clEnqueueCopyBuffer(q2.get(), b.get(), c.get(), 0, 0, bytes / 2,
                                    1, &bar_ev, e3.out()));
  Step(q2.get(), k2.get(), c.get(), 7, {e3.get()}, e4.out());
  VGPU_CL_CHECK(clEnqueueMarkerWithWaitList(q2.get(), 0, nullptr, e_end.out()));
  callbacks.Watch(e1.get(), 10);
  callbacks.Watch(e2.get(), 11);
  callbacks.Watch(e3.get(), 12);
  callbacks.Watch(e4.get(), 13);
  callbacks.Watch(e_end.get(), 14);
  cl_event end_ev = e_end.get();
  VGPU_CL_CHECK(clWaitForEvents(1, &end_ev));
  VGPU_CL_CHECK(clFinish(q2.get()));
  callbacks.WaitAll();
  for (cl_event e : {e_wb.get(), e_wc.get(), e1.get(), e2.get(), e_bar.get(),
                     e3.get(), e4.get(), e_end.get()}) {
    DigestEvent(d, e, q2.get(), ctx);
  }
  run.EndStep();

  // Step 4.
  Queue q3(
      clCreateCommandQueue(ctx, run.device(), CL_QUEUE_PROFILING_ENABLE, &err));
  VGPU_CL_CHECK_ERR(err, "clCreateCommandQueue(profiling)");
  Event e_prof, e_read;
  Step(q3.get(), k.get(), a.get(), 11, {e_marker.get()}, e_prof.out());
  std::vector<cl_int> ra(kN), rb(kN), rc(kN);
  cl_event p_ev = e_prof.get();
  VGPU_CL_CHECK(clEnqueueReadBuffer(q3.get(), a.get(), CL_FALSE, 0, bytes,
                                    ra.data(), 1, &p_ev, e_read.out()));
  cl_event r_ev = e_read.get();
  VGPU_CL_CHECK(clWaitForEvents(1, &r_ev));
  cl_ulong t[4] = {0, 0, 0, 0};
  const cl_profiling_info which[4] = {
      CL_PROFILING_COMMAND_QUEUED, CL_PROFILING_COMMAND_SUBMIT,
      CL_PROFILING_COMMAND_START, CL_PROFILING_COMMAND_END};
  for (int i = 0; i < 4; ++i) {
    VGPU_CL_CHECK(clGetEventProfilingInfo(e_prof.get(), which[i],
                                          sizeof(cl_ulong), &t[i], nullptr));
  }
  const bool ordered = t[0] <= t[1] && t[1] <= t[2] && t[2] <= t[3];
  Expect(ordered, "profiling times queued <= submit <= start <= end");
  d.Pod(static_cast<cl_int>(ordered));
  cl_ulong unused = 0;
  const cl_int no_prof =
      clGetEventProfilingInfo(e_kernel.get(), CL_PROFILING_COMMAND_END,
                              sizeof(unused), &unused, nullptr);
  Expect(no_prof == CL_PROFILING_INFO_NOT_AVAILABLE,
         "profiling info of a command on a queue without profiling: " +
             ClErrorText(no_prof));
  d.Pod(no_prof);
  DigestEvent(d, e_prof.get(), q3.get(), ctx);
  DigestEvent(d, e_read.get(), q3.get(), ctx);
  VGPU_CL_CHECK(clEnqueueReadBuffer(q2.get(), b.get(), CL_TRUE, 0, bytes,
                                    rb.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clEnqueueReadBuffer(q2.get(), c.get(), CL_TRUE, 0, bytes,
                                    rc.data(), 0, nullptr, nullptr));
  VGPU_CL_CHECK(clFinish(q3.get()));
  VGPU_CL_CHECK(clFinish(q2.get()));
  VGPU_CL_CHECK(clFinish(q));
  d.Vector(ra);
  d.Vector(rb);
  d.Vector(rc);
  const auto log = callbacks.Sorted();
  for (const auto& [tag, status] : log) {
    Expect(status == CL_COMPLETE, "callback " + std::to_string(tag) +
                                      " saw status " + std::to_string(status));
    d.Pod(tag);
    d.Pod(status);
  }

  std::vector<cl_int> ha = init_a, hb = init_b, hc = init_c;
  HostStep(ha, 1);
  HostStep(ha, 11);
  HostStep(hb, 2);
  HostStep(hc, 5);
  std::copy(hb.begin(), hb.begin() + kN / 2, hc.begin());
  HostStep(hc, 7);
  Expect(ra == ha && rb == hb && rc == hc,
         "buffers hold the host model's values (wait lists were respected)");
  run.Fact("callbacks", static_cast<long long>(log.size()));
  run.Fact("out_of_order", ooo ? "yes" : "no");
  run.Fact("check", "ok");
  run.EndStep();
}

}  // namespace vgpu::forwarding::samples

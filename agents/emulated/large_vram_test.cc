// 1 GiB of VRAM end to end: the workload on a 1 GiB device, a stop-and-copy
// migration of all of it into a 1 GiB --incoming device, and the workload
// going on there. Heavy (two 1 GiB memfds, a 1 GiB copy): tagged manual.
#include <gtest/gtest.h>

#include <cstring>

#include "agents/emulated/device_control.h"
#include "agents/emulated/guest_client.h"
#include "agents/emulated/testing/device_process.h"
#include "agents/emulated/workload.h"

namespace vgpu::agents::emulated {
namespace {

using testing::DeviceProcess;

constexpr uint64_t kGib = uint64_t{1} << 30;

TEST(LargeVram, OneGibMigratesAndTheWorkloadGoesOn) {
  auto src = DeviceProcess::Start({.name = "src1g", .vram = "1G"});
  ASSERT_TRUE(src.ok()) << src.status();
  auto guest = *GuestClient::Connect((*src)->socket_path());
  ASSERT_EQ(guest->vram_bytes(), kGib);
  EXPECT_EQ(*guest->ReadReg(dispi::kIndexVideoMemory64k), kGib / 65536);
  WorkloadOptions o;
  o.max_pages = 300000;  // more than one pass over 261376 counter pages
  auto w = *Workload::Start(guest.get(), o);
  ASSERT_TRUE(w->Run().ok());
  EXPECT_EQ(w->stats().state.base, 1u);

  auto src_agent = *DeviceControl::Connect((*src)->socket_path());
  ASSERT_TRUE(src_agent->Quiesce().ok());
  const WorkloadLayout& layout = w->layout();
  absl::StatusOr<CounterState> cut = CheckCounters(src_agent->vram(), layout);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(*cut, w->stats().state);
  std::vector<uint8_t> regs = *src_agent->SaveRegisters();
  std::vector<uint8_t> ring = *src_agent->SaveRing();

  auto dst =
      DeviceProcess::Start({.name = "dst1g", .vram = "1G", .incoming = true});
  ASSERT_TRUE(dst.ok()) << dst.status();
  auto dst_agent = *DeviceControl::Connect((*dst)->socket_path());
  absl::StatusOr<absl::Span<uint8_t>> vram = dst_agent->mutable_vram();
  ASSERT_TRUE(vram.ok()) << vram.status();
  std::memcpy(vram->data(), src_agent->vram().data(), kGib);
  ASSERT_TRUE(dst_agent->LoadRegisters(regs).ok());
  ASSERT_TRUE(dst_agent->LoadRing(ring).ok());
  ASSERT_TRUE(dst_agent->Resume().ok());
  src->reset();

  auto dst_guest = *GuestClient::Connect((*dst)->socket_path());
  WorkloadOptions more;
  more.max_pages = 10000;
  auto w2 = *Workload::Start(dst_guest.get(), more);
  EXPECT_EQ(w2->stats().state, *cut);
  ASSERT_TRUE(w2->Run().ok());
  ASSERT_TRUE(dst_agent->Quiesce().ok());
  absl::StatusOr<CounterState> end = CheckCounters(dst_agent->vram(), layout);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->Total(layout), cut->Total(layout) + 10000);
}

}  // namespace
}  // namespace vgpu::agents::emulated

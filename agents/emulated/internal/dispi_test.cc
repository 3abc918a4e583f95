#include "agents/emulated/internal/dispi.h"

#include <gtest/gtest.h>

namespace vgpu::agents::emulated::internal {
namespace {

using namespace dispi;  // NOLINT

constexpr uint64_t kVram = 8 << 20;

// Programs a mode the way Linux's bochs driver does.
void SetMode(DispiRegisters& r, uint16_t x, uint16_t y, uint16_t bpp,
             uint16_t enable = kEnabled | kLfbEnabled) {
  r.Write(kIndexEnable, 0);
  r.Write(kIndexBpp, bpp);
  r.Write(kIndexXres, x);
  r.Write(kIndexYres, y);
  r.Write(kIndexEnable, enable);
}

TEST(Dispi, ResetState) {
  DispiRegisters r(kVram);
  EXPECT_EQ(r.Read(kIndexId), kId5);
  for (uint16_t i = 1; i < kRegisterCount; ++i) EXPECT_EQ(r.Read(i), 0) << i;
  EXPECT_EQ(r.Read(kIndexVideoMemory64k), kVram / 65536);
  EXPECT_EQ(r.Read(0xb), 0);
  EXPECT_EQ(r.Read(0xffff), 0);
  EXPECT_FALSE(r.mode().enabled);
}

TEST(Dispi, IdAcceptsKnownVersionsAndReadsThemBack) {
  DispiRegisters r(kVram);
  for (uint16_t id = 0xB0C0; id <= 0xB0C5; ++id) {
    EXPECT_TRUE(r.Write(kIndexId, id).accepted);
    EXPECT_EQ(r.Read(kIndexId), id);
  }
  for (uint16_t bad : {0xB0BF, 0xB0C6, 0x0000, 0xFFFF}) {
    EXPECT_FALSE(r.Write(kIndexId, bad).accepted) << bad;
    EXPECT_EQ(r.Read(kIndexId), 0xB0C5);
  }
}

TEST(Dispi, ModeRegistersValidatedAgainstLimits) {
  DispiRegisters r(kVram);
  EXPECT_TRUE(r.Write(kIndexXres, 1024).accepted);
  EXPECT_FALSE(r.Write(kIndexXres, 1023).accepted);  // not a multiple of 8
  EXPECT_FALSE(r.Write(kIndexXres, 0).accepted);
  EXPECT_FALSE(r.Write(kIndexXres, kMaxXres + 8).accepted);
  EXPECT_EQ(r.Read(kIndexXres), 1024);

  EXPECT_TRUE(r.Write(kIndexYres, 768).accepted);
  EXPECT_FALSE(r.Write(kIndexYres, kMaxYres + 1).accepted);
  EXPECT_FALSE(r.Write(kIndexYres, 0).accepted);
  EXPECT_EQ(r.Read(kIndexYres), 768);

  for (uint16_t bpp : {4, 8, 15, 16, 24, 32}) {
    EXPECT_TRUE(r.Write(kIndexBpp, bpp).accepted);
    EXPECT_EQ(r.Read(kIndexBpp), bpp);
  }
  EXPECT_TRUE(r.Write(kIndexBpp, 0).accepted);  // means 8
  EXPECT_EQ(r.Read(kIndexBpp), 8);
  for (uint16_t bpp : {1, 12, 31, 33, 64}) {
    EXPECT_FALSE(r.Write(kIndexBpp, bpp).accepted) << bpp;
    EXPECT_EQ(r.Read(kIndexBpp), 8);
  }
}

TEST(Dispi, GetCapsReportsMaxima) {
  DispiRegisters r(kVram);
  r.Write(kIndexXres, 640);
  r.Write(kIndexYres, 480);
  r.Write(kIndexBpp, 16);
  r.Write(kIndexEnable, kGetCaps);
  EXPECT_EQ(r.Read(kIndexXres), kMaxXres);
  EXPECT_EQ(r.Read(kIndexYres), kMaxYres);
  EXPECT_EQ(r.Read(kIndexBpp), kMaxBpp);
  EXPECT_EQ(r.Read(kIndexEnable), kGetCaps);
  r.Write(kIndexEnable, 0);
  EXPECT_EQ(r.Read(kIndexXres), 640);
  EXPECT_EQ(r.Read(kIndexYres), 480);
  EXPECT_EQ(r.Read(kIndexBpp), 16);
}

TEST(Dispi, EnableDerivesVirtualScreenAndClears) {
  DispiRegisters r(kVram);
  r.Write(kIndexXOffset, 8);
  r.Write(kIndexBpp, 32);
  r.Write(kIndexXres, 1024);
  r.Write(kIndexYres, 768);
  DispiRegisters::WriteResult w = r.Write(kIndexEnable, kEnabled | kLfbEnabled);
  ASSERT_TRUE(w.accepted);
  EXPECT_EQ(w.clear_bytes, 768u * 4096u);
  EXPECT_EQ(r.Read(kIndexVirtWidth), 1024);
  EXPECT_EQ(r.Read(kIndexXOffset), 0);
  EXPECT_EQ(r.Read(kIndexVirtHeight), kVram / 4096);
  EXPECT_EQ(r.Read(kIndexEnable), kEnabled | kLfbEnabled);
  DisplayMode m = r.mode();
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.bytes_per_pixel, 4u);
  EXPECT_EQ(m.pitch, 4096u);

  // Re-writing ENABLE while enabled does not clear again.
  EXPECT_EQ(r.Write(kIndexEnable, kEnabled | kLfbEnabled).clear_bytes, 0u);

  DispiRegisters q(kVram);
  q.Write(kIndexBpp, 16);
  q.Write(kIndexXres, 800);
  q.Write(kIndexYres, 600);
  w = q.Write(kIndexEnable, kEnabled | kNoClearMem);
  ASSERT_TRUE(w.accepted);
  EXPECT_EQ(w.clear_bytes, 0u);
}

TEST(Dispi, EnableIgnoredWhenModeDoesNotFit) {
  DispiRegisters r(kVram);
  r.Write(kIndexBpp, 32);
  r.Write(kIndexXres, 4096);
  r.Write(kIndexYres, 4096);  // 64 MiB > 8 MiB
  EXPECT_FALSE(r.Write(kIndexEnable, kEnabled).accepted);
  EXPECT_FALSE(r.mode().enabled);
  EXPECT_EQ(r.Read(kIndexEnable), 0);

  DispiRegisters fresh(kVram);  // XRES/YRES never set
  EXPECT_FALSE(fresh.Write(kIndexEnable, kEnabled).accepted);
}

TEST(Dispi, EnabledModeChangesMustFit) {
  DispiRegisters r(kVram);
  SetMode(r, 1024, 768, 32);
  ASSERT_TRUE(r.mode().enabled);
  EXPECT_FALSE(r.Write(kIndexYres, 4000).accepted);  // 4000 * 4096 > 8 MiB
  EXPECT_EQ(r.Read(kIndexYres), 768);
  EXPECT_TRUE(r.Write(kIndexBpp, 16).accepted);
  EXPECT_EQ(r.mode().pitch, 2048u);
  EXPECT_EQ(r.Read(kIndexVirtHeight), kVram / 2048);
  EXPECT_TRUE(r.Write(kIndexBpp, 32).accepted);
  // Growing XRES widens the virtual screen with it.
  EXPECT_TRUE(r.Write(kIndexXres, 1280).accepted);
  EXPECT_EQ(r.Read(kIndexVirtWidth), 1280);
}

TEST(Dispi, VirtualWidthAndPanning) {
  DispiRegisters r(kVram);
  SetMode(r, 1024, 768, 32);
  EXPECT_FALSE(r.Write(kIndexVirtWidth, 512).accepted);  // < XRES
  EXPECT_TRUE(r.Write(kIndexVirtWidth, 2048).accepted);
  EXPECT_EQ(r.Read(kIndexVirtHeight), kVram / 8192);
  EXPECT_EQ(r.mode().pitch, 8192u);
  EXPECT_TRUE(r.Write(kIndexVirtWidth, 1024).accepted);
  // Page flipping: the second buffer at Y_OFFSET 768 fits (2048 rows).
  EXPECT_TRUE(r.Write(kIndexYOffset, 768).accepted);
  EXPECT_EQ(r.Read(kIndexYOffset), 768);
  EXPECT_FALSE(r.Write(kIndexYOffset, 1500).accepted);  // 1500 + 768 > 2048
  EXPECT_EQ(r.Read(kIndexYOffset), 768);
  EXPECT_TRUE(r.Write(kIndexXOffset, 16).accepted);
  EXPECT_FALSE(r.Write(kIndexXOffset, kMaxXres + 1).accepted);
}

TEST(Dispi, ReadOnlyRegistersAndBankMask) {
  DispiRegisters r(kVram);
  SetMode(r, 640, 480, 8);
  const uint16_t vh = r.Read(kIndexVirtHeight);
  EXPECT_FALSE(r.Write(kIndexVirtHeight, 1).accepted);
  EXPECT_EQ(r.Read(kIndexVirtHeight), vh);
  EXPECT_FALSE(r.Write(kIndexVideoMemory64k, 1).accepted);
  EXPECT_EQ(r.Read(kIndexVideoMemory64k), kVram / 65536);
  EXPECT_FALSE(r.Write(0x0b, 1).accepted);
  r.Write(kIndexBank, 0xFFFF);
  EXPECT_EQ(r.Read(kIndexBank), kVram / 65536 - 1);
}

TEST(Dispi, ValidateAcceptsReachableStatesOnly) {
  DispiRegisters r(kVram);
  EXPECT_TRUE(DispiRegisters::Validate(r.regs(), kVram).ok());
  SetMode(r, 1024, 768, 32);
  r.Write(kIndexYOffset, 768);
  EXPECT_TRUE(DispiRegisters::Validate(r.regs(), kVram).ok());
  // The same registers on a device with less VRAM do not fit.
  EXPECT_FALSE(DispiRegisters::Validate(r.regs(), 2 << 20).ok());

  auto broken = [&](uint16_t index, uint16_t value) {
    RegisterArray regs = r.regs();
    regs[index] = value;
    return DispiRegisters::Validate(regs, kVram);
  };
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexId, 0x1234)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexBpp, 13)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexXres, 1001)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexEnable, 0x101)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexVirtHeight, 5)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexVirtWidth, 512)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexBank, 0x1000)));
  EXPECT_TRUE(absl::IsInvalidArgument(broken(kIndexYOffset, 2000)));
}

}  // namespace
}  // namespace vgpu::agents::emulated::internal

# Bodies of the emulated vGPU's state blobs (registers, ring) and the command
# encoding they share with the device protocol. Each blob is a 32-byte
# header followed by one of these messages: docs/formats/emulated-device.md.
# Field numbers are never reused; retired fields are renamed obsoleteX and
# kept. A minor version only appends fields that older readers may ignore.
@0xfd0747f17ee1252f;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::agents::emulated::proto");

enum Rop {
  copy @0;
  xor @1;
  and @2;
  or @3;
  notSrc @4;
}

struct Command {
  union {
    fill :group {
      offset @0 :UInt64;
      length @1 :UInt64;
      pattern @2 :UInt32;
    }
    copy :group {
      src @3 :UInt64;
      dst @4 :UInt64;
      length @5 :UInt64;
    }
    blit :group {
      srcX @6 :UInt32;
      srcY @7 :UInt32;
      dstX @8 :UInt32;
      dstY @9 :UInt32;
      width @10 :UInt32;
      height @11 :UInt32;
      rop @12 :Rop;
    }
    checksum :group {
      offset @13 :UInt64;
      length @14 :UInt64;
    }
    write :group {
      offset @15 :UInt64;
      data @16 :Data;          # at most 64 KiB
    }
    fence :group {
      value @17 :UInt64;
    }
  }
}

# Values of agents/emulated/command.h EngineError.
enum EngineError {
  none @0;
  outOfBounds @1;
  badMode @2;
  badCommand @3;
}

struct RegistersState {
  vramBytes @0 :UInt64;        # the device's VRAM size; must match on load
  regs @1 :List(UInt16);       # DISPI registers 0..9 in index order
}

struct ChecksumResult {
  seq @0 :UInt64;              # sequence number of the CHECKSUM command
  value @1 :UInt64;            # XXH3-64 (0 when error is not none)
  error @2 :EngineError;
}

struct RingState {
  capacity @0 :UInt32;         # of the source ring (informational)
  head @1 :UInt64;             # sequence number of commands[0]
  commands @2 :List(Command);  # queued, not yet executed, in order
  submittedFence @3 :UInt64;
  completedFence @4 :UInt64;
  checksums @5 :List(ChecksumResult);  # computed, not yet taken
  errorCount @6 :UInt64;
  lastError @7 :EngineError;
  lastErrorSeq @8 :UInt64;
  lastErrorMessage @9 :Text;
}

# The control protocol of vgpu-emu-device: length-prefixed Cap'n Proto
# messages on a Unix stream socket (framing and rules in
# docs/formats/emulated-device.md). A client sends Request{hello} first,
# then one request at a time, each answered by one Response. Field numbers
# are never reused.
@0xecb808456ee7b51e;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::agents::emulated::proto");

using State = import "state.capnp";

struct Hello {
  enum Role {
    guest @0;
    agent @1;
  }
  role @0 :Role;
  client @1 :Text;             # for the device's log
  protocolMajor @2 :UInt16;    # 1
}

struct RegWrite {
  index @0 :UInt16;
  value @1 :UInt16;
}

struct Range {
  offset @0 :UInt64;
  length @1 :UInt64;
}

struct WaitFence {
  value @0 :UInt64;
  timeoutMs @1 :UInt64;        # 0 = wait without a limit
}

struct Request {
  union {
    hello @0 :Hello;
    # guest
    writeReg @1 :RegWrite;
    readReg @2 :UInt16;
    submit @3 :List(State.Command);
    fence @4 :Void;            # enqueue FENCE(submittedFence + 1)
    waitFence @5 :WaitFence;
    takeChecksum @6 :UInt64;   # the CHECKSUM command's sequence number
    engineStatus @7 :Void;
    readVram @8 :Range;        # at most 16 MiB
    # agent
    info @9 :Void;
    startDirtyTracking @10 :Void;
    stopDirtyTracking @11 :Void;
    fetchDirtyBitmap @12 :Void;
    quiesce @13 :Void;
    resume @14 :Void;
    saveRegisters @15 :Void;
    saveRing @16 :Void;
    loadRegisters @17 :Data;
    loadRing @18 :Data;
    mapVramWritable @19 :Void; # answered with a writable memfd
  }
}

struct Info {
  name @0 :Text;
  vramBytes @1 :UInt64;
  pageBytes @2 :UInt32;
  dispiId @3 :UInt16;
  abiMajor @4 :UInt32;
  abiMinor @5 :UInt32;
  quiesced @6 :Bool;
  tracking @7 :Bool;
  incomingFresh @8 :Bool;      # --incoming and never resumed
  ringCapacity @9 :UInt32;
  queuedCommands @10 :UInt64;      # commands in the ring, not yet executed
  queuedCommandBytes @11 :UInt64;  # their payload bytes
}

struct EngineStatus {
  head @0 :UInt64;
  tail @1 :UInt64;
  submittedFence @2 :UInt64;
  completedFence @3 :UInt64;
  errorCount @4 :UInt64;
  lastError @5 :State.EngineError;
  lastErrorSeq @6 :UInt64;
  lastErrorMessage @7 :Text;
  quiesced @8 :Bool;
}

struct Response {
  code @0 :UInt32;             # absl::StatusCode; 0 = OK
  message @1 :Text;
  union {
    none @2 :Void;
    value @3 :UInt64;
    data @4 :Data;
    info @5 :Info;
    words @6 :List(UInt64);    # dirty bitmap; sequence numbers of a submit
    engineStatus @7 :EngineStatus;
  }
}

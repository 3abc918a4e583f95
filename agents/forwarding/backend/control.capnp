# Control protocol of vgpu-cl-backend, for vgpud's API-forwarding agent and
# for tools. Same frames as the guest protocol (agents/forwarding/frame.h):
# bulk bytes (the session log, memory contents) travel as frame payloads.
#
# Two kinds of endpoint speak it:
#   the supervisor (vgpu-cl-backend --control ...): listSessions, createTarget
#   each session worker (its own socket, SessionInfo.control): everything else
@0xa7b629f1ab19d5d7;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::forwarding::control");

using P = import "/agents/forwarding/protocol.capnp";

struct GuestInfo {
  vm @0 :Text;
  library @1 :Text;
  abi @2 :P.Version;
  features @3 :List(Text);
}

struct SessionInfo {
  session @0 :UInt64;
  guest @1 :GuestInfo;
  control @2 :Text;            # the worker's control address
  guestAddress @3 :Text;       # where guests reach this backend
  memoryBytes @4 :UInt64;
  logEntries @5 :UInt64;
  logBytes @6 :UInt64;
  calls @7 :UInt64;
  attached @8 :Bool;
  frozen @9 :Bool;
  platform @10 :Text;
  device @11 :Text;
  pid @12 :Int32;
  token @13 :Data;             # the guest's resume secret (control is root-only)
  memoryLimit @14 :UInt64;
  # What the session's state depends on ("cl-binary:<device name>" when a
  # live program was created from a binary, which only that kind of device
  # accepts).
  requiredFeatures @15 :List(Text);
}

struct MemEntry {
  id @0 :UInt64;
  type @1 :UInt32;             # CL_MEM_OBJECT_BUFFER, ..._IMAGE2D, ...
  bytes @2 :UInt64;
  dirty @3 :Bool;
}

struct ControlRequest {
  union {
    describe @0 :Void;                   # reply: session
    freeze @1 :Void;
    thaw @2 :Void;
    saveLog @3 :Void;                    # reply payload: the log
    mems @4 :Bool;                       # clear the dirty set; reply: mems
    readMem :group {                     # reply payload: the bytes
      id @5 :UInt64;
      offset @6 :UInt64;
      bytes @7 :UInt64;
    }
    replay @8 :Void;                     # request payload: the log
    writeMem :group {                    # request payload: the bytes
      id @9 :UInt64;
      offset @10 :UInt64;
    }
    # A restored session takes over the identity the guest knows it by
    # (session id and token), so the guest's resume finds it.
    activate :group {
      guest @11 :GuestInfo;
      session @16 :UInt64;
      token @17 :Data;
    }
    # The guest is told to reconnect to `address`; it resumes there with the
    # same session id and token (a migrated session keeps its identity).
    handOff @12 :Text;
    quit @13 :Void;                      # end the worker (an unused target)
    listSessions @14 :Void;              # supervisor; reply: sessions
    createTarget @15 :Void;              # supervisor; reply: session (+token)
  }
}

struct ControlReply {
  # absl status code (0 OK) and its message.
  code @0 :Int32;
  error @1 :Text;
  union {
    none @2 :Void;
    session @3 :SessionInfo;
    sessions @4 :List(SessionInfo);
    mems @5 :List(MemEntry);
  }
}

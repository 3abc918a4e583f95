# Types shared by the peer protocol (peer.capnp) and the control API
# (control.capnp). Evolution rules as for every schema of the project:
# append fields only, never reuse a number (docs/formats/image.md).
@0xcda6bbc25bf58151;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::schema");

# An absl::Status as a value. code 0 = OK; otherwise absl::StatusCode.
struct Error {
  code @0 :UInt32;
  message @1 :Text;
}

struct CompatRow {
  device @0 :Int32;       # -1: the whole VM
  instance @1 :Text;
  strategy @2 :Text;
  rule @3 :Text;
  ok @4 :Bool;
  detail @5 :Text;
}

struct CompatReport {
  destination @0 :Text;
  rows @1 :List(CompatRow);
  notes @2 :List(Text);
}

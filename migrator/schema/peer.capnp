# The peer protocol between two vgpud daemons (Cap'n Proto RPC over TLS,
# TCP port 7480 by default). The source daemon connects and drives one
# migration per connection through the phases of docs/MIGRATION.md:
# hello, then prepare (compatibility check, target devices created), the
# state stream (Incoming.write, image format of docs/formats/image.md),
# finish (load and verify everything, ready to run) and confirm (the source
# has committed: activate). The destination tears down everything it
# created if the connection drops, or abort arrives, before confirm; the
# source never runs again once it sent confirm, unless outcome says the
# destination did not activate. So the two never both run the vGPUs.
@0xedb5da5be794d645;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::schema");
using D = import "/state-codecs/schema/descriptor.capnp";
using C = import "common.capnp";
using I = import "/state-codecs/schema/image.capnp";

const peerProtocol :UInt32 = 1;

interface Peer {
  # Both sides name themselves; a protocol the destination does not speak
  # is refused in `error`.
  hello @0 (host :Text, protocol :UInt32)
      -> (host :Text, protocol :UInt32, error :C.Error);

  # The compatibility report for these devices on this host. No side
  # effects (vgpu-migrate --check).
  check @1 (vm :I.VmIdentity, devices :List(D.DeviceDescriptor))
      -> (report :C.CompatReport);

  # Prepare: check, then create the target devices. When refused, `error`
  # is FAILED_PRECONDITION and `incoming` is null.
  # `hints`: per device, what its source agent needs to know about the
  # new device (TargetDevice::hint: an API-forwarding session's new backend
  # address, where its guest library reconnects after release).
  prepare @2 (job :Text, vm :I.VmIdentity,
              devices :List(D.DeviceDescriptor))
      -> (incoming :Incoming, report :C.CompatReport, error :C.Error,
          hints :List(Text));

  # After a confirm whose answer was lost: did this host activate the
  # job's vGPUs? An incoming job still waiting for confirm is torn down
  # first, so the answer is final. known=false: no such job here.
  outcome @3 (job :Text) -> (known :Bool, activated :Bool);

  # The caller (the hello'd host) asks for VM `vm`, whose guest libvirt is
  # migrating to it: this host starts a migration of the VM to the caller
  # that follows the guest (pre-copy until the guest pauses, confirm once
  # it has left), and answers once the caller is prepared (or refused,
  # with the report). Refused (FAILED_PRECONDITION) unless this host's
  # libvirt is migrating the guest away now. `job` is that migration's id.
  pull @4 (vm :Text) -> (job :Text, error :C.Error, report :C.CompatReport);
}

interface Incoming {
  # Perform: the next bytes of the migration stream, in order. Returns
  # once the bytes are queued for loading (so in-flight calls bound the
  # bytes buffered at the destination). A stream the destination finds
  # damaged fails the next call with DATA_LOSS.
  write @0 (data :Data) -> (error :C.Error);

  # End of stream. Finish: the destination checks the stream's end and
  # that every section was loaded and verified. OK means the vGPUs are
  # ready to run here; nothing runs yet.
  finish @1 () -> (error :C.Error);

  # Confirm: the source has committed (its vGPUs stay stopped): activate.
  # OK means the vGPUs run here and the VM belongs to this host. An error
  # means activation failed and everything here was torn down.
  confirm @2 () -> (error :C.Error);

  # The source gives up (cancel, its own failure). Everything prepared is
  # torn down. Also what happens when the connection drops before confirm.
  abort @3 (reason :Text) -> ();

  # Returns once the destination has loaded every byte written so far (its
  # loader waits for more). The source calls it before stopping the vGPUs,
  # so that the loader's backlog is not carried into the downtime.
  drain @4 () -> (error :C.Error);

  # A migration that follows its guest (pull), after finish: what the
  # guest does here. `left`: it runs here (libvirt resumed it), confirm
  # now; `stayed`: its incoming domain failed, abort; `stopped`: still
  # arriving; `unknown`: this host cannot watch its guests (no libvirt).
  guest @5 () -> (move :GuestView, why :Text);
}

enum GuestView {
  unknown @0;
  stopped @1;
  left @2;
  stayed @3;
}

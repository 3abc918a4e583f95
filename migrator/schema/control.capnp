# The control API of vgpud, served on its root-only Unix socket
# (/run/vgpud/control.sock by default) to the vgpu-migrate CLI, the libvirt
# hook and a cloud control plane. Long work (migrate, snapshot, restore)
# starts a job and returns its id at once; callers follow it with
# watch(), which returns as soon as the job has changed.
# Reference: docs/API.md.
@0xd725507c047cd6de;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::schema");
using D = import "/state-codecs/schema/descriptor.capnp";
using C = import "common.capnp";

struct DeviceRecord {
  strategy @0 :Text;     # "emulation", ...
  # emulation: the device model's control socket; mediated: the mdev
  # UUID; directPassthrough: the PCI address.
  endpoint @1 :Text;
  descriptor @2 :D.DeviceDescriptor;  # filled by listVms when reachable
  owned @3 :Bool;        # vgpud started this device (incoming, restore)
  problem @4 :Text;      # why the device could not be described, if so
  health @5 :Text;       # the backend's word on the device, if any
}

struct VmRecord {
  name @0 :Text;
  uuid @1 :Text;
  devices @2 :List(DeviceRecord);
  job @3 :Text;          # the job holding the VM, if any
}

struct MigrateOptions {
  downtimeMs @0 :UInt32;          # 0: the daemon's configured budget
  bandwidth @1 :UInt64;           # bytes/s; 0: the configured cap
  maxRounds @2 :UInt32;           # 0: the configured limit
  compress @3 :Bool = true;
  # Test seam: the job waits at the start of this phase until cancelled or
  # continued (continueJob). Empty in normal use.
  pauseAt @4 :Text;
}

struct JobStatus {
  id @0 :Text;
  kind @1 :Text;          # migrate | snapshot | restore | incoming
  vm @2 :Text;
  peer @3 :Text;          # the other host, or the store
  phase @4 :Text;         # begin | prepare | precopy | stopcopy | finish | confirm | done
  state @5 :Text;         # running | done | failed | cancelled
  seq @6 :UInt64;         # bumps on every change
  round @7 :UInt32;
  rawBytes @8 :UInt64;    # state bytes streamed so far
  wireBytes @9 :UInt64;   # bytes on the wire (compressed, framed)
  pendingBytes @10 :UInt64;
  rateBytesPerSec @11 :Float64;   # state bytes per second, recent
  estDowntimeMs @12 :Float64;     # pending / rate
  etaSeconds @13 :Float64;
  elapsedSeconds @14 :Float64;
  downtimeMs @15 :Float64;        # measured, once the vGPUs stopped
  error @16 :C.Error;
  snapshot @17 :Text;             # snapshot id (snapshot jobs)
  sourceResumed @18 :Bool;        # failed/cancelled: the source runs again
  report @19 :C.CompatReport;     # when Prepare refused
  totalSeconds @20 :Float64;
  rounds @21 :List(UInt64);       # pending bytes after each round
  roundBytes @22 :UInt64;         # state bytes sent in the current round
  roundTotal @23 :UInt64;         # what the current round set out to send
  waiting @24 :Text;              # what the job waits for ("the guest to stop")
  # incoming and pull jobs: the devices created here, and the other host's
  # job (a pull's migration on the source, an incoming's on the source).
  endpoints @25 :List(Text);
  remoteJob @26 :Text;
}

struct SnapshotRecord {
  id @0 :Text;
  vm @1 :Text;
  vmUuid @2 :Text;
  tag @3 :Text;
  parent @4 :Text;
  createdUnixNanos @5 :Int64;
  logicalBytes @6 :UInt64;
  storedBytes @7 :UInt64;
  sections @8 :UInt32;
  devices @9 :List(Text);
}

struct DamageRecord {
  snapshot @0 :Text;
  section @1 :Text;
  chunk @2 :Text;
  what @3 :Text;
}

interface Control {
  hostInfo @0 () -> (host :Text, peers :List(Text), version :Text);
  listVms @1 () -> (vms :List(VmRecord));
  # Device models and backends announce their VMs here (the launcher of a
  # device model, the libvirt hook, static config).
  registerVm @2 (vm :VmRecord) -> (error :C.Error);
  unregisterVm @3 (name :Text) -> (error :C.Error);

  check @4 (vm :Text, to :Text) -> (report :C.CompatReport, error :C.Error);
  migrate @5 (vm :Text, to :Text, options :MigrateOptions)
      -> (job :Text, error :C.Error);
  snapshot @6 (vm :Text, tag :Text) -> (job :Text, error :C.Error);
  # Restore a snapshot as VM  (default: the snapshot's VM name), which
  # must not exist on this host.
  restore @7 (snapshot :Text, as :Text) -> (job :Text, error :C.Error);

  # The job's status once its seq exceeds afterSeq, or after waitMs.
  watch @8 (job :Text, afterSeq :UInt64, waitMs :UInt32)
      -> (status :JobStatus, error :C.Error);
  jobs @9 () -> (jobs :List(JobStatus));
  cancel @10 (job :Text) -> (error :C.Error);
  continueJob @11 (job :Text) -> (error :C.Error);

  snapshots @12 (vm :Text) -> (snapshots :List(SnapshotRecord), error :C.Error);
  deleteSnapshot @13 (id :Text) -> (error :C.Error);
  verify @14 (id :Text)
      -> (snapshots :UInt64, chunks :UInt64, bytes :UInt64,
          damage :List(DamageRecord), error :C.Error);
  # Paths are the daemon's (absolute).
  exportSnapshot @15 (id :Text, path :Text) -> (error :C.Error);
  importSnapshot @16 (path :Text, tag :Text)
      -> (snapshot :SnapshotRecord, error :C.Error);

  # May vGPUs described so run on this host? The compatibility report of
  # this host's own offer, as a destination would compute it; for the
  # libvirt hook, which vetoes an incoming domain it cannot host.
  checkHere @17 (devices :List(D.DeviceDescriptor))
      -> (report :C.CompatReport, error :C.Error);

  # Pull VM `vm` as the guest's own migration moves it (libvirt's live
  # migration; the destination's hook calls this on `migrate begin`), from
  # host `from` (a peer; empty or this host: ask every peer, as only the
  # one whose libvirt migrates the guest away sends it). The source needs
  # a libvirt connection: its migration pre-copies until libvirt pauses
  # the guest and confirms once the guest runs here. The pull job is done
  # when this host is prepared; its status names the source (`peer`) and
  # the new devices (`endpoints`).
  pull @18 (vm :Text, from :Text) -> (job :Text, error :C.Error);
}

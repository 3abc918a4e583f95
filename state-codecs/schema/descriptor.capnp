# DeviceDescriptor: how a vGPU describes itself to the compatibility checker.
# Written by agents on the source, carried in image manifests and in the
# migrator's Prepare call. Evolution rules: docs/formats/image.md ("Evolving").
@0xdf5be02f22e19d05;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::schema");

enum Strategy {
  unknown @0;
  emulation @1;          # software device model (registers, VRAM, command ring)
  apiForwarding @2;      # host backend executing forwarded OpenCL/CUDA calls
  mediated @3;           # mdev / SR-IOV, VFIO migration v2
  directPassthrough @4;  # whole device owned by the VM
}

struct Version {
  major @0 :UInt32;
  minor @1 :UInt32;
  patch @2 :UInt32;
}

struct DeviceDescriptor {
  strategy @0 :Strategy;
  # Stable host-local name of the instance (mdev UUID, device model socket,
  # backend session id). Rewritten on the destination.
  instanceId @1 :Text;
  vendor @2 :Text;              # "nvidia", "qemu-bochs", "pocl", ...
  pciVendorId @3 :UInt32;       # 0 when not a PCI device
  pciDeviceId @4 :UInt32;
  architecture @5 :Text;        # "hopper", "bochs-dispi", "pthread-cpu", ...
  boardType @6 :Text;           # vGPU/board type ("H100-80GB-PCIe", "GRID A100-4C")
  driverVersion @7 :Version;
  # The guest wrapper library (API forwarding) or device model ABI.
  wrapperName @8 :Text;
  wrapperAbi @9 :Version;
  features @10 :List(Text);          # what this device/wrapper offers
  requiredFeatures @11 :List(Text);  # what the running guest state depends on
  vramBytes @12 :UInt64;
  bar0Bytes @13 :UInt64;
  contextCount @14 :UInt32;
  eccEnabled @15 :Bool;
  # Direct pass-through: whether the device driver offers VFIO migration.
  migrationCapable @16 :Bool;
}

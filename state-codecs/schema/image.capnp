# The metadata messages of the vGPU state image/stream. Bulk bytes never live
# here: they travel in checksummed chunk frames that these messages describe.
# The binary framing around these messages is specified in
# docs/formats/image.md. Field numbers are never reused; retired fields are
# renamed obsoleteX and kept.
@0xaf31169d616f99fe;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::schema");

using Descriptor = import "descriptor.capnp";

struct CreationInfo {
  tool @0 :Text;              # "vgpu-image 0.1.0", "vgpud 0.1.0"
  hostName @1 :Text;
  createdUnixNanos @2 :Int64;
}

struct VmIdentity {
  name @0 :Text;
  uuid @1 :Text;              # libvirt domain UUID, lower-case with dashes
}

struct DeviceEntry {
  index @0 :UInt32;           # referenced by SectionHeader.device
  descriptor @1 :Descriptor.DeviceDescriptor;
}

struct ParentRef {
  imageId @0 :Data;           # 16 bytes
  name @1 :Text;
}

enum ImageKind {
  checkpoint @0;              # a complete or incremental snapshot
  migrationStream @1;         # a live-migration stream (sections repeat per round)
}

# The first frame of every image. Everything a destination needs to decide
# whether it can accept the state comes before the first section.
struct Manifest {
  magic @0 :UInt64;           # equals the stream header magic
  formatMajor @1 :UInt16;
  formatMinor @2 :UInt16;
  imageId @3 :Data;           # 16 random bytes
  kind @4 :ImageKind;
  creation @5 :CreationInfo;
  vm @6 :VmIdentity;
  devices @7 :List(DeviceEntry);
  parent @8 :ParentRef;       # unset (imageId empty) for a full image
  chunkSize @9 :UInt32;       # encoder parameters, recorded so that
  zstdLevel @10 :Int32;       # `vgpu-image recode` reproduces the bytes
}

struct PageRange {
  first @0 :UInt64;           # page number
  count @1 :UInt64;
}

enum SessionApi {
  opencl @0;
  cuda @1;
}

# Describes one section; its bytes follow as chunk frames.
struct SectionHeader {
  id @0 :UInt32;              # unique within the image, starts at 1
  device @1 :UInt32;          # DeviceEntry.index
  name @2 :Text;              # "bank0", "vram", "session", "ctx3", ...
  # A reader that does not know this section's kind must reject the image if
  # critical is set, and may skip the section otherwise.
  critical @3 :Bool = true;
  round @4 :UInt32;           # pre-copy round (0 = initial pass)
  declaredBytes @5 :UInt64;   # 0 = not known in advance

  union {
    registerBank :group {
      registerWidth @6 :UInt8;  # bytes per register (1, 2, 4, 8)
      registerCount @7 :UInt32;
    }
    memoryRegion :group {
      pageSize @8 :UInt32;
      totalPages @9 :UInt64;    # size of the region in pages
      # The data is the concatenation of these pages, in range order.
      presentRanges @10 :List(PageRange);
      # Pages known to be all-zero; no bytes travel for them.
      zeroRanges @11 :List(PageRange);
    }
    apiSessionLog :group {
      api @12 :SessionApi;
      abi @13 :Descriptor.Version;
      entryCount @14 :UInt64;
    }
    contextImage :group {
      contextId @15 :UInt32;
      engine @16 :Text;
      imageFormat @17 :UInt32;
    }
    vendorBlob :group {
      vendor @18 :Text;
      blobType @19 :Text;
    }
  }
}

struct IndexEntry {
  id @0 :UInt32;
  device @1 :UInt32;
  name @2 :Text;
  kind @3 :UInt16;            # SectionHeader union discriminant
  beginOffset @4 :UInt64;     # byte offset of the section-begin frame
  rawBytes @5 :UInt64;        # uncompressed bytes, zero runs included
  storedBytes @6 :UInt64;     # bytes on the wire, frame headers included
  chunkCount @7 :UInt64;
  digest @8 :UInt64;          # the section-end digest
}

# Written after the last section: where each section is and what it holds.
struct SectionIndex {
  entries @0 :List(IndexEntry);
}

# Test-only: SectionHeader as a hypothetical format 1.1 writer would define
# it, with a union member this version does not know. Layout-identical to
# schema/image.capnp's SectionHeader for every field up to @19.
@0xb28e92720e958fae;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::future");

struct Version {
  major @0 :UInt32;
  minor @1 :UInt32;
  patch @2 :UInt32;
}

struct PageRange {
  first @0 :UInt64;
  count @1 :UInt64;
}

enum SessionApi {
  opencl @0;
  cuda @1;
}

struct SectionHeader {
  id @0 :UInt32;
  device @1 :UInt32;
  name @2 :Text;
  critical @3 :Bool = true;
  round @4 :UInt32;
  declaredBytes @5 :UInt64;
  union {
    registerBank :group {
      registerWidth @6 :UInt8;
      registerCount @7 :UInt32;
    }
    memoryRegion :group {
      pageSize @8 :UInt32;
      totalPages @9 :UInt64;
      presentRanges @10 :List(PageRange);
      zeroRanges @11 :List(PageRange);
    }
    apiSessionLog :group {
      api @12 :SessionApi;
      abi @13 :Version;
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
    tensorCoreState :group {
      smCount @20 :UInt32;
    }
  }
}

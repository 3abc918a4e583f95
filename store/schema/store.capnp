# The checkpoint store's own records, kept in RocksDB (layout in
# docs/formats/store.md). Snapshots are self-contained: every extent names
# the chunk holding its bytes, so deleting any snapshot of a chain leaves
# the others whole.
@0x8648f71d07b97ec0;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::store::schema");

# A run of a section's logical bytes. For memory regions the logical space
# is the whole region (totalPages * pageSize); for other sections it is the
# section's data.
struct Extent {
  offset @0 :UInt64;        # logical byte offset
  length @1 :UInt64;
  # 32-byte SHA-256 of the chunk's raw bytes; empty for a known-zero run.
  chunk @2 :Data;
  chunkOffset @3 :UInt32;   # where this extent starts inside the chunk
}

struct SectionRecord {
  # The SectionHeader message as it arrived (id and ranges are rewritten
  # when the snapshot is read back).
  header @0 :Data;
  logicalBytes @1 :UInt64;
  # Sorted by offset, non-overlapping. For memory regions, bytes not
  # covered are absent (not in this snapshot, nor in its parents).
  extents @2 :List(Extent);
}

struct SnapshotRecord {
  id @0 :Text;              # hex of the image id
  vmName @1 :Text;
  vmUuid @2 :Text;
  tag @3 :Text;
  parent @4 :Text;          # id of the parent snapshot, or empty
  createdUnixNanos @5 :Int64;
  manifest @6 :Data;        # the image's Manifest message as it arrived
  sections @7 :List(SectionRecord);
  logicalBytes @8 :UInt64;  # bytes of state a restore writes
  storedBytes @9 :UInt64;   # chunk bytes this snapshot added to the store
  chunkRefs @10 :UInt64;    # distinct chunks it references
}

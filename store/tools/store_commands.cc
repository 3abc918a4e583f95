#include "store/tools/store_commands.h"

#include <sys/stat.h>

#include <ctime>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "state-codecs/tools/progress.h"

namespace vgpu::store::tools {
namespace {

using json = nlohmann::ordered_json;
using vgpu::tools::HumanBytes;
using vgpu::tools::IsoTime;
using vgpu::tools::ProgressBar;

json InfoJson(const SnapshotInfo& s) {
  return json{{"id", s.id},
              {"vm", s.vm_name},
              {"vmUuid", s.vm_uuid},
              {"tag", s.tag},
              {"parent", s.parent.empty() ? json(nullptr) : json(s.parent)},
              {"created", IsoTime(s.created_unix_nanos)},
              {"logicalBytes", s.logical_bytes},
              {"storedBytes", s.stored_bytes},
              {"chunks", s.chunk_refs},
              {"sections", s.sections},
              {"devices", s.devices}};
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size)
                                        : 0;
}

// A sink that counts bytes for a progress bar while passing them on.
class CountingSink : public codec::ByteSink {
 public:
  CountingSink(codec::ByteSink* inner, ProgressBar* bar, uint64_t total)
      : inner_(inner), bar_(bar) {}
  absl::Status Write(absl::Span<const uint8_t> data) override {
    written_ += data.size();
    bar_->Update(written_);
    return inner_->Write(data);
  }
  absl::Status Close() override { return inner_->Close(); }
  const std::string& name() const override { return inner_->name(); }

 private:
  codec::ByteSink* inner_;
  ProgressBar* bar_;
  uint64_t written_ = 0;
};

}  // namespace

int Report(const absl::Status& s, const StoreIo& io) {
  if (s.ok()) return 0;
  io.err << "vgpu-store: " << s.message() << "\n";
  switch (s.code()) {
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kFailedPrecondition:
      return 1;
    default:
      return 2;
  }
}

int ListSnapshots(Store& store, const std::string& vm, const StoreIo& io) {
  auto list = store.List(vm);
  if (!list.ok()) return Report(list.status(), io);
  if (io.json) {
    json out = json::array();
    for (const SnapshotInfo& s : *list) out.push_back(InfoJson(s));
    io.out << out.dump(2) << "\n";
    return 0;
  }
  io.out << absl::StrFormat("%-32s  %-12s  %-20s  %10s  %10s  %-16s  %s\n",
                            "ID", "VM", "CREATED", "STATE", "ADDED", "TAG",
                            "PARENT");
  for (const SnapshotInfo& s : *list) {
    io.out << absl::StrFormat(
        "%-32s  %-12s  %-20s  %10s  %10s  %-16s  %s\n", s.id, s.vm_name,
        IsoTime(s.created_unix_nanos), HumanBytes(s.logical_bytes),
        HumanBytes(s.stored_bytes), s.tag.empty() ? "-" : s.tag,
        s.parent.empty() ? "-" : s.parent.substr(0, 12));
  }
  if (list->empty()) io.out << "(no snapshots)\n";
  return 0;
}

int ShowSnapshot(Store& store, const std::string& id, const StoreIo& io) {
  auto s = store.Get(id);
  if (!s.ok()) return Report(s.status(), io);
  if (io.json) {
    io.out << InfoJson(*s).dump(2) << "\n";
    return 0;
  }
  io.out << absl::StrFormat("snapshot  %s\n", s->id);
  io.out << absl::StrFormat("vm        %s (%s)\n", s->vm_name, s->vm_uuid);
  io.out << absl::StrFormat("created   %s\n", IsoTime(s->created_unix_nanos));
  io.out << absl::StrFormat("tag       %s\n", s->tag.empty() ? "-" : s->tag);
  io.out << absl::StrFormat("parent    %s\n",
                            s->parent.empty() ? "none (full)" : s->parent);
  io.out << absl::StrFormat("state     %s in %u sections, %u chunks\n",
                            HumanBytes(s->logical_bytes), s->sections,
                            s->chunk_refs);
  io.out << absl::StrFormat("added     %s of new chunks\n",
                            HumanBytes(s->stored_bytes));
  for (const std::string& d : s->devices) io.out << "device    " << d << "\n";
  return 0;
}

int PutImage(Store& store, const std::string& path, const PutOptions& options,
             const StoreIo& io) {
  auto src = codec::OpenFileSource(path);
  if (!src.ok()) return Report(src.status(), io);
  ProgressBar bar("put", FileSize(path), io.progress && !io.json);
  PutOptions o = options;
  o.progress = [&](const codec::StreamStats& st) { bar.Update(st.stored_bytes); };
  auto info = store.Put(src->get(), o);
  bar.Done();
  if (!info.ok()) return Report(info.status(), io);
  if (io.json) {
    io.out << InfoJson(*info).dump(2) << "\n";
  } else {
    io.out << absl::StrFormat(
        "stored snapshot %s of %s: %s of state, %s of new chunks\n", info->id,
        info->vm_name, HumanBytes(info->logical_bytes),
        HumanBytes(info->stored_bytes));
  }
  return 0;
}

int ExportImage(Store& store, const std::string& id, const std::string& path,
                const StoreIo& io) {
  auto info = store.Get(id);
  if (!info.ok()) return Report(info.status(), io);
  auto file = codec::OpenFileSink(path);
  if (!file.ok()) return Report(file.status(), io);
  ProgressBar bar("export", info->logical_bytes, io.progress && !io.json);
  CountingSink sink(file->get(), &bar, info->logical_bytes);
  absl::Status s = store.Read(id, &sink, codec::WriterOptions{});
  bar.Done();
  if (!s.ok()) return Report(s, io);
  if (io.json) {
    io.out << json{{"id", id}, {"file", path}, {"bytes", FileSize(path)}}.dump(2)
           << "\n";
  } else {
    io.out << absl::StrFormat("exported %s to %s (%s)\n", id, path,
                              HumanBytes(FileSize(path)));
  }
  return 0;
}

int DeleteSnapshot(Store& store, const std::string& id, const StoreIo& io) {
  absl::Status s = store.Delete(id);
  if (!s.ok()) return Report(s, io);
  if (io.json) {
    io.out << json{{"deleted", id}}.dump() << "\n";
  } else {
    io.out << "deleted " << id << "\n";
  }
  return 0;
}

int VerifyStore(Store& store, const std::string& id, const StoreIo& io) {
  auto r = store.Verify(id);
  if (!r.ok()) return Report(r.status(), io);
  if (io.json) {
    json damage = json::array();
    for (const Damage& d : r->damage) {
      damage.push_back({{"snapshot", d.snapshot},
                        {"section", d.section},
                        {"chunk", d.chunk},
                        {"what", d.what}});
    }
    io.out << json{{"ok", r->damage.empty()},
                   {"snapshots", r->snapshots},
                   {"chunksChecked", r->chunks_checked},
                   {"bytesChecked", r->bytes_checked},
                   {"damage", damage}}
                  .dump(2)
           << "\n";
  } else {
    for (const Damage& d : r->damage) {
      io.out << absl::StrFormat("DAMAGED snapshot %s, section '%s', chunk %s: %s\n",
                                d.snapshot, d.section, d.chunk, d.what);
    }
    io.out << absl::StrFormat("%s: %u snapshots, %u chunks, %s checked\n",
                              r->damage.empty() ? "OK" : "DAMAGE FOUND",
                              r->snapshots, r->chunks_checked,
                              HumanBytes(r->bytes_checked));
  }
  return r->damage.empty() ? 0 : 1;
}

int CollectGarbage(Store& store, const StoreIo& io) {
  auto r = store.CollectGarbage();
  if (!r.ok()) return Report(r.status(), io);
  if (io.json) {
    io.out << json{{"chunksFreed", r->chunks_freed},
                   {"bytesFreed", r->bytes_freed},
                   {"chunksKept", r->chunks_kept}}
                  .dump(2)
           << "\n";
  } else {
    io.out << absl::StrFormat("freed %u chunks (%s); %u chunks in use\n",
                              r->chunks_freed, HumanBytes(r->bytes_freed),
                              r->chunks_kept);
  }
  return 0;
}

int ShowStats(Store& store, const StoreIo& io) {
  auto r = store.Stats();
  if (!r.ok()) return Report(r.status(), io);
  if (io.json) {
    io.out << json{{"snapshots", r->snapshots},
                   {"chunks", r->chunks},
                   {"chunkBytes", r->chunk_bytes}}
                  .dump(2)
           << "\n";
  } else {
    io.out << absl::StrFormat("%u snapshots, %u chunks, %s of chunk data\n",
                              r->snapshots, r->chunks,
                              HumanBytes(r->chunk_bytes));
  }
  return 0;
}

}  // namespace vgpu::store::tools

// The admin commands of the checkpoint store (list, show, put, export,
// import, delete, verify, gc, stats), as functions that print to the given
// streams and return an exit code: 0 ok, 1 damage found or refused, 2 usage
// or I/O error. `vgpu-store` calls them; the migrator's CLI will too.
#ifndef VGPU_STORE_TOOLS_STORE_COMMANDS_H_
#define VGPU_STORE_TOOLS_STORE_COMMANDS_H_

#include <ostream>
#include <string>

#include "store/store.h"

namespace vgpu::store::tools {

struct StoreIo {
  std::ostream& out;
  std::ostream& err;
  bool json = false;
  bool progress = true;  // drawn only when stderr is a terminal
};

int ListSnapshots(Store& store, const std::string& vm, const StoreIo& io);
int ShowSnapshot(Store& store, const std::string& id, const StoreIo& io);
int PutImage(Store& store, const std::string& path, const PutOptions& options,
             const StoreIo& io);
int ExportImage(Store& store, const std::string& id, const std::string& path,
                const StoreIo& io);
int DeleteSnapshot(Store& store, const std::string& id, const StoreIo& io);
int VerifyStore(Store& store, const std::string& id, const StoreIo& io);
int CollectGarbage(Store& store, const StoreIo& io);
int ShowStats(Store& store, const StoreIo& io);

// Maps a Status to the exit code above, printing it.
int Report(const absl::Status& s, const StoreIo& io);

}  // namespace vgpu::store::tools

#endif  // VGPU_STORE_TOOLS_STORE_COMMANDS_H_

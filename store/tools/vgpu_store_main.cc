// vgpu-store: administer a checkpoint store directly (the daemon normally
// owns it; this tool is for operators and for stores no daemon has open).
#include <CLI/CLI.hpp>
#include <iostream>

#include "store/tools/store_commands.h"

int main(int argc, char** argv) {
  using namespace vgpu::store;
  CLI::App app{
      "vgpu-store: list, inspect, verify and maintain a vGPU checkpoint "
      "store.\nOnly one process may open a store: stop vgpud first, or use "
      "its API.\nExit status: 0 ok, 1 damage found or request refused, 2 "
      "usage or I/O error."};
  app.require_subcommand(1);
  app.fallthrough();
  std::string path = kDefaultPath;
  bool json = false, no_progress = false;
  app.add_option("--store", path, "Store directory")->capture_default_str();
  app.add_flag("--json", json, "Machine-readable output on stdout");
  app.add_flag("--no-progress", no_progress, "Never draw progress bars");

  std::string vm, id, file, tag, parent;
  auto* list = app.add_subcommand("list", "List snapshots, newest first");
  list->add_option("--vm", vm, "Only this VM's snapshots");
  auto* show = app.add_subcommand("show", "Show one snapshot");
  show->add_option("id", id, "Snapshot id")->required();
  auto* put = app.add_subcommand(
      "put", "Store an image file as a snapshot (alias: import)");
  put->alias("import");
  put->add_option("image", file, "Image file")->required();
  put->add_option("--tag", tag, "A label for the snapshot");
  put->add_option("--parent", parent,
                  "Parent snapshot id (default: the image's own parent)");
  auto* exp = app.add_subcommand(
      "export", "Write a snapshot as one complete, portable image file");
  exp->add_option("id", id, "Snapshot id")->required();
  exp->add_option("file", file, "Output image file")->required();
  auto* del = app.add_subcommand("delete", "Delete a snapshot");
  del->add_option("id", id, "Snapshot id")->required();
  auto* verify = app.add_subcommand(
      "verify", "Re-read and check every chunk (exit 1 on any damage)");
  verify->add_option("id", id, "Snapshot id (default: all)");
  auto* gc = app.add_subcommand("gc", "Free chunks no snapshot references");
  auto* stats = app.add_subcommand("stats", "Counts and sizes");

  CLI11_PARSE(app, argc, argv);
  tools::StoreIo io{std::cout, std::cerr, json, !no_progress};
  StoreOptions options;
  options.path = path;
  auto store = Store::Open(options);
  if (!store.ok()) return tools::Report(store.status(), io);
  Store& s = **store;
  if (*list) return tools::ListSnapshots(s, vm, io);
  if (*show) return tools::ShowSnapshot(s, id, io);
  if (*put) {
    PutOptions o;
    o.tag = tag;
    o.parent = parent;
    return tools::PutImage(s, file, o, io);
  }
  if (*exp) return tools::ExportImage(s, id, file, io);
  if (*del) return tools::DeleteSnapshot(s, id, io);
  if (*verify) return tools::VerifyStore(s, id, io);
  if (*gc) return tools::CollectGarbage(s, io);
  if (*stats) return tools::ShowStats(s, io);
  return 2;
}

// Writes the seed corpus of peer_input_fuzzer: a manifest whose devices
// exercise every strategy's rules, a config file and a host profile.
//   bazel run //migrator/fuzz:make_seeds -- $PWD/migrator/fuzz/corpus/peer_input
#include <cstdio>
#include <fstream>
#include <string>

#include "state-codecs/message.h"
#include "state-codecs/schema/image.capnp.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  vgpu::codec::Message<vgpu::schema::Manifest> m;
  auto devices = m.mutable_root().initDevices(4);
  const char* vendors[] = {"vgpu-migrate", "pocl", "nvidia", "nvidia"};
  const vgpu::schema::Strategy strategies[] = {
      vgpu::schema::Strategy::EMULATION, vgpu::schema::Strategy::API_FORWARDING,
      vgpu::schema::Strategy::MEDIATED,
      vgpu::schema::Strategy::DIRECT_PASSTHROUGH};
  for (int i = 0; i < 4; ++i) {
    auto d = devices[i].initDescriptor();
    devices[i].setIndex(i);
    d.setStrategy(strategies[i]);
    d.setVendor(vendors[i]);
    d.setArchitecture(i >= 2 ? "hopper" : "bochs-dispi");
    d.setBoardType(i == 2 ? "H100-4C" : "H100-80GB-HBM3");
    d.setWrapperName("vgpu-opencl");
    d.initWrapperAbi().setMajor(1);
    d.initDriverVersion().setMajor(550);
    d.setVramBytes(64ull << 20);
    d.initRequiredFeatures(1).set(0, "fp64");
  }
  auto bytes = vgpu::codec::EncodeMessageBytes(m.builder());
  std::ofstream(dir + "/manifest.bin", std::ios::binary)
      .write("M", 1)
      .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::ofstream(dir + "/config.json")
      << "C{\"host\": \"h1\", \"peers\": {\"h2\": \"10.0.0.2:7480\"}, "
         "\"bandwidth\": \"1G\", \"emulation\": {\"max_vram\": \"4G\"}, "
         "\"vms\": [{\"name\": \"vm1\", \"devices\": [{\"strategy\": "
         "\"emulation\", \"endpoint\": \"/run/x.sock\"}]}]}";
  std::ofstream(dir + "/profile.json")
      << "P{\"host\": \"h2\", \"gpus\": [{\"vendor\": \"nvidia\", "
         "\"architecture\": \"hopper\", \"board_type\": \"H100-80GB-HBM3\", "
         "\"driver\": \"550.54.14\", \"free_instances\": {\"H100-4C\": 2}}]}";
  return 0;
}

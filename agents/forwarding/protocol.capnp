# The OpenCL forwarding protocol between the guest library (libvgpu-opencl)
# and the host backend (vgpu-cl-backend). Spec: docs/formats/cl-forwarding.md.
#
# A connection carries frames (agents/forwarding/frame.h): a 16-byte header,
# one flat Cap'n Proto message (Request upstream, Reply downstream) and an
# optional raw payload of bulk bytes that follows the message. Bulk data
# (buffer and image contents) travels only as payload, never inside the
# message, so that both ends can move it straight between the socket and the
# application's or the device's memory.
#
# Handles: every object the application sees is named by a 64-bit id.
# Objects the application creates (contexts .. events) get their id from the
# guest library, which sends it in the create request; platforms and devices
# get theirs from the backend (ids below 2^16, stable for a given backend
# platform/device index). Ids never change, even when the session moves to
# another backend: the session log replays the same ids there.
#
# Evolution: new fields and union members are added at the end; the ABI
# version's minor number counts additions, the major number breaks.
@0xa7114c8a4504ee8d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vgpu::forwarding::proto");

const abiMajor :UInt32 = 1;
const abiMinor :UInt32 = 0;

enum ObjKind {
  platform @0;
  device @1;
  context @2;
  queue @3;
  mem @4;
  sampler @5;
  program @6;
  kernel @7;
  event @8;
}

# Which clGet*Info a GetInfo stands for.
enum InfoKind {
  platform @0;          # clGetPlatformInfo(id)
  device @1;            # clGetDeviceInfo(id)
  context @2;           # clGetContextInfo(id)
  queue @3;             # clGetCommandQueueInfo(id)
  mem @4;               # clGetMemObjectInfo(id)
  image @5;             # clGetImageInfo(id)
  sampler @6;           # clGetSamplerInfo(id)
  program @7;           # clGetProgramInfo(id)
  programBuild @8;      # clGetProgramBuildInfo(id, device aux)
  kernel @9;            # clGetKernelInfo(id)
  kernelWorkGroup @10;  # clGetKernelWorkGroupInfo(id, device aux)
  kernelArg @11;        # clGetKernelArgInfo(id, arg index aux)
  event @12;            # clGetEventInfo(id)
  eventProfiling @13;   # clGetEventProfilingInfo(id)
}

struct Version {
  major @0 :UInt32;
  minor @1 :UInt32;
  patch @2 :UInt32;
}

struct Hello {
  abi @0 :Version;            # the library's protocol ABI
  library @1 :Text;           # "libvgpu-opencl 1.0.0"
  features @2 :List(Text);    # what the library can do ("cl1.2", "resume", ...)
  vm @3 :Text;                # the VM (or client) the session belongs to
  # Resuming a session that moved (or whose channel was re-plugged): its id
  # and the token the first HelloReply gave. 0: a new session.
  resumeSession @4 :UInt64;
  resumeToken @5 :Data;
  # Resume: the highest seq whose reply the library received; requests after
  # it are sent again once the session is back.
  lastSeqAnswered @6 :UInt64;
}

struct HelloReply {
  session @0 :UInt64;
  token @1 :Data;             # 32 random bytes; proves a later resume
  abi @2 :Version;            # the backend's protocol ABI
  backend @3 :Text;           # "vgpu-cl-backend 1.0.0 on Portable Computing Language"
}

struct ContextProperty {
  name @0 :Int64;             # CL_CONTEXT_PLATFORM, CL_CONTEXT_INTEROP_USER_SYNC ...
  value @1 :Int64;            # a platform property carries the platform id
}

struct ImageFormat {
  channelOrder @0 :UInt32;
  channelDataType @1 :UInt32;
}

struct ImageDesc {
  type @0 :UInt32;            # CL_MEM_OBJECT_IMAGE2D ...
  width @1 :UInt64;
  height @2 :UInt64;
  depth @3 :UInt64;
  arraySize @4 :UInt64;
  rowPitch @5 :UInt64;
  slicePitch @6 :UInt64;
  numMipLevels @7 :UInt32;
  numSamples @8 :UInt32;
  buffer @9 :UInt64;          # mem id of an image1d_buffer's buffer, else 0
}

# A region of a buffer or image; origins and regions in bytes for buffers
# (x only for plain reads and writes) and in pixels for images.
struct Rect {
  origin @0 :List(UInt64);    # 3 entries (buffer rect: host and buffer origin)
  region @1 :List(UInt64);    # 3 entries
  bufferRowPitch @2 :UInt64;
  bufferSlicePitch @3 :UInt64;
  hostRowPitch @4 :UInt64;
  hostSlicePitch @5 :UInt64;
  hostOrigin @6 :List(UInt64);
}

# Every command enqueued on a queue. The payload of a write is the bytes to
# write; the reply of a read carries the bytes read as its payload. Reads
# and maps are always completed before the reply (the library treats every
# read as blocking, which the specification allows); writes carry their
# bytes, so the application may reuse its memory as soon as the call
# returns.
struct Enqueue {
  queue @0 :UInt64;
  waitList @1 :List(UInt64);  # event ids
  event @2 :UInt64;           # id for the command's event; 0: none wanted
  union {
    ndRange @3 :NdRange;
    task @4 :UInt64;                    # kernel id
    readBuffer @5 :BufferIo;            # reply payload: size bytes
    writeBuffer @6 :BufferIo;           # request payload: size bytes
    readBufferRect @7 :BufferRectIo;    # reply payload: packed host region
    writeBufferRect @8 :BufferRectIo;   # request payload: packed host region
    copyBuffer @9 :CopyBuffer;
    copyBufferRect @10 :CopyBufferRect;
    fillBuffer @11 :FillBuffer;         # pattern in the message
    readImage @12 :ImageIo;             # reply payload: rowPitch/slicePitch as given
    writeImage @13 :ImageIo;            # request payload
    copyImage @14 :CopyImage;
    fillImage @15 :FillImage;
    copyImageToBuffer @16 :CopyImageBuffer;
    copyBufferToImage @17 :CopyImageBuffer;
    marker @18 :Void;                   # clEnqueueMarkerWithWaitList
    barrier @19 :Void;                  # clEnqueueBarrierWithWaitList
    migrateMemObjects @20 :MigrateMem;
  }
}

struct NdRange {
  kernel @0 :UInt64;
  globalOffset @1 :List(UInt64);  # empty: none
  globalSize @2 :List(UInt64);    # work_dim entries
  localSize @3 :List(UInt64);     # empty: the implementation chooses
}

struct BufferIo {
  mem @0 :UInt64;
  offset @1 :UInt64;
  size @2 :UInt64;
  blocking @3 :Bool;            # as the application asked (informational)
}

struct BufferRectIo {
  mem @0 :UInt64;
  bufferOrigin @1 :List(UInt64);
  hostOrigin @2 :List(UInt64);
  region @3 :List(UInt64);
  bufferRowPitch @4 :UInt64;
  bufferSlicePitch @5 :UInt64;
  hostRowPitch @6 :UInt64;
  hostSlicePitch @7 :UInt64;
  blocking @8 :Bool;
}

struct CopyBuffer {
  src @0 :UInt64;
  dst @1 :UInt64;
  srcOffset @2 :UInt64;
  dstOffset @3 :UInt64;
  size @4 :UInt64;
}

struct CopyBufferRect {
  src @0 :UInt64;
  dst @1 :UInt64;
  srcOrigin @2 :List(UInt64);
  dstOrigin @3 :List(UInt64);
  region @4 :List(UInt64);
  srcRowPitch @5 :UInt64;
  srcSlicePitch @6 :UInt64;
  dstRowPitch @7 :UInt64;
  dstSlicePitch @8 :UInt64;
}

struct FillBuffer {
  mem @0 :UInt64;
  pattern @1 :Data;
  offset @2 :UInt64;
  size @3 :UInt64;
}

struct ImageIo {
  mem @0 :UInt64;
  origin @1 :List(UInt64);
  region @2 :List(UInt64);
  rowPitch @3 :UInt64;
  slicePitch @4 :UInt64;
  blocking @5 :Bool;
}

struct CopyImage {
  src @0 :UInt64;
  dst @1 :UInt64;
  srcOrigin @2 :List(UInt64);
  dstOrigin @3 :List(UInt64);
  region @4 :List(UInt64);
}

struct FillImage {
  mem @0 :UInt64;
  fillColor @1 :Data;          # 16 bytes: float4, int4 or uint4
  origin @2 :List(UInt64);
  region @3 :List(UInt64);
}

struct CopyImageBuffer {
  image @0 :UInt64;
  buffer @1 :UInt64;
  origin @2 :List(UInt64);     # image origin
  region @3 :List(UInt64);
  bufferOffset @4 :UInt64;
}

struct MigrateMem {
  mems @0 :List(UInt64);
  flags @1 :UInt64;
}

struct Request {
  # Echoed by the reply. Strictly increasing per connection; never 0.
  seq @0 :UInt64;
  union {
    hello @1 :Hello;
    getPlatformIds @2 :Void;                   # reply: ids
    getDeviceIds :group {                      # reply: ids
      platform @3 :UInt64;
      deviceType @4 :UInt64;
    }
    getInfo :group {                           # reply: info
      kind @5 :InfoKind;
      id @6 :UInt64;
      aux @7 :UInt64;          # device id or argument index, by kind
      param @8 :UInt32;
      # The application asked for the size only (no value buffer): the
      # backend makes only that query, whose answer may differ from the
      # value query's on some platforms. The reply's info then holds as
      # many zero bytes as the value has.
      sizeOnly @101 :Bool;
    }
    retain :group {
      kind @9 :ObjKind;
      id @10 :UInt64;
    }
    release :group {
      kind @11 :ObjKind;
      id @12 :UInt64;
    }
    createContext :group {
      id @13 :UInt64;
      properties @14 :List(ContextProperty);
      devices @15 :List(UInt64);
    }
    createContextFromType :group {
      id @16 :UInt64;
      properties @17 :List(ContextProperty);
      deviceType @18 :UInt64;
    }
    createQueue :group {
      id @19 :UInt64;
      context @20 :UInt64;
      device @21 :UInt64;
      # clCreateCommandQueue's flags as {CL_QUEUE_PROPERTIES, flags}, or
      # clCreateCommandQueueWithProperties' list; pairs of (name, value).
      properties @22 :List(UInt64);
      withProperties @23 :Bool;  # which entry point the application called
    }
    createBuffer :group {
      # Payload: `size` bytes of initial contents when flags include
      # CL_MEM_COPY_HOST_PTR or CL_MEM_USE_HOST_PTR (the library keeps the
      # host pointer for CL_MEM_HOST_PTR and for maps).
      id @24 :UInt64;
      context @25 :UInt64;
      flags @26 :UInt64;
      size @27 :UInt64;
    }
    createSubBuffer :group {
      id @28 :UInt64;
      parent @29 :UInt64;
      flags @30 :UInt64;
      origin @31 :UInt64;
      size @32 :UInt64;
    }
    createImage :group {
      # Payload as for createBuffer, packed with the desc's pitches.
      id @33 :UInt64;
      context @34 :UInt64;
      flags @35 :UInt64;
      format @36 :ImageFormat;
      desc @37 :ImageDesc;
      legacy @38 :Bool;        # via clCreateImage2D/3D (1.1 entry points)
    }
    getSupportedImageFormats :group {          # reply: imageFormats
      context @39 :UInt64;
      flags @40 :UInt64;
      imageType @41 :UInt32;
    }
    createSampler :group {
      id @42 :UInt64;
      context @43 :UInt64;
      normalizedCoords @44 :Bool;
      addressingMode @45 :UInt32;
      filterMode @46 :UInt32;
    }
    createProgramWithSource :group {
      id @47 :UInt64;
      context @48 :UInt64;
      sources @49 :List(Text);   # the strings, lengths applied
    }
    createProgramWithBinary :group {           # reply: statuses
      id @50 :UInt64;
      context @51 :UInt64;
      devices @52 :List(UInt64);
      binaries @53 :List(Data);
    }
    createProgramWithBuiltInKernels :group {
      id @54 :UInt64;
      context @55 :UInt64;
      devices @56 :List(UInt64);
      kernelNames @57 :Text;
    }
    buildProgram :group {
      # The notify callback, when the application gave one, is called by
      # the library once the reply is in (the build is finished by then).
      program @58 :UInt64;
      devices @59 :List(UInt64);  # empty: all of the program's devices
      options @60 :Text;
    }
    compileProgram :group {
      program @61 :UInt64;
      devices @62 :List(UInt64);
      options @63 :Text;
      headers @64 :List(UInt64);  # program ids of the embedded headers
      headerNames @65 :List(Text);
    }
    linkProgram :group {
      id @66 :UInt64;             # the new program
      context @67 :UInt64;
      devices @68 :List(UInt64);
      options @69 :Text;
      inputs @70 :List(UInt64);
    }
    createKernel :group {
      id @71 :UInt64;
      program @72 :UInt64;
      name @73 :Text;
    }
    createKernelsInProgram :group {            # reply: count
      program @74 :UInt64;
      ids @75 :List(UInt64);     # ids for the kernels, as many as the caller
                                 # has room for (may be empty: count only)
    }
    setKernelArg :group {
      kernel @76 :UInt64;
      index @77 :UInt32;
      size @78 :UInt64;
      union {
        value @79 :Data;       # by value (size bytes)
        mem @80 :UInt64;       # a cl_mem argument (0: a NULL buffer)
        sampler @81 :UInt64;   # a cl_sampler argument
        local @82 :Void;       # __local memory of `size` bytes (NULL value)
      }
    }
    enqueue @83 :Enqueue;                      # reply: payload for reads
    waitForEvents @84 :List(UInt64);
    createUserEvent :group {
      id @85 :UInt64;
      context @86 :UInt64;
    }
    setUserEventStatus :group {
      event @87 :UInt64;
      status @88 :Int32;
    }
    setEventCallback :group {
      # The backend sends a `callback` notification carrying `cookie` when
      # the event reaches `status` (or an error status).
      event @89 :UInt64;
      status @90 :Int32;
      cookie @91 :UInt64;
    }
    flush @92 :UInt64;                         # queue id
    finish @93 :UInt64;                        # queue id
    unloadPlatformCompiler @94 :UInt64;        # platform id
    ping @95 :Void;                            # latency probe: no OpenCL call
    # Only in a restore (never from a guest): re-creates an event the
    # session held at the checkpoint, complete (or failed) with `status`,
    # or a user event not yet set (status CL_SUBMITTED). Its info answers
    # (context, queue, command type, status) are those it had.
    restoreEvent :group {
      id @96 :UInt64;
      context @97 :UInt64;
      queue @98 :UInt64;          # 0 for a user event
      commandType @99 :UInt32;
      status @100 :Int32;
    }
  }
}

struct Reply {
  # The request's seq; 0 for a notification the backend sends on its own.
  seq @0 :UInt64;
  # The CL error code the call returned natively (CL_SUCCESS = 0). A request
  # the backend could not take at all (malformed, unknown id, over a limit)
  # gets the CL code the native call would give for it, and `message`.
  code @1 :Int32;
  message @2 :Text;
  union {
    none @3 :Void;
    hello @4 :HelloReply;
    ids @5 :List(UInt64);
    # The info value as the native call returned it, except that object
    # handles inside it are replaced by ids (same 8-byte width) and
    # CL_PROGRAM_BINARIES is returned as the binaries concatenated in
    # device order (their sizes are CL_PROGRAM_BINARY_SIZES).
    info @6 :Data;
    statuses @7 :List(Int32);
    imageFormats @8 :List(ImageFormat);
    count @9 :UInt32;
    # Notifications (seq 0).
    callback :group {
      cookie @10 :UInt64;
      status @11 :Int32;
    }
    # The session moved to another backend: reconnect to `address`
    # ("unix:/path" or "tcp:host:port") and resume `session` with `token`.
    # Requests without a reply are sent again there.
    moved :group {
      address @12 :Text;
      session @13 :UInt64;
      token @14 :Data;
    }
  }
}

"""capnp_cc_library: compiles Cap'n Proto schemas with the system `capnp` tool."""

def capnp_cc_library(name, srcs, deps = [], imports = [], visibility = None):
    """Generates C++ for `srcs` (*.capnp in this package) and wraps it.

    Generated headers are included as "<package>/<file>.capnp.h".
    `imports` names .capnp files of other packages that `srcs` import by
    their workspace path ("/state-codecs/schema/descriptor.capnp"); their
    generated code comes from `deps`.
    """
    outs_h = [s + ".h" for s in srcs]
    outs_cc = [s + ".c++" for s in srcs]
    native.genrule(
        name = name + "_gen",
        srcs = srcs + imports,
        outs = outs_h + outs_cc,
        cmd = "capnp compile --no-standard-import -I/usr/include -I. -oc++:$(GENDIR) " +
              " ".join(["$(location %s)" % s for s in srcs]) +
              # capnp writes cross-package imports as <pkg/x.capnp.h>; the
              # generated header lives in Bazel's output tree, which only
              # quote includes search.
              " && sed -i -E 's,#include <((state-codecs|store|agents|migrator)/[^>]*[.]capnp[.]h)>,#include \"\\1\",' $(OUTS)",
        message = "capnp compile " + name,
    )
    native.cc_library(
        name = name,
        srcs = outs_cc,
        hdrs = outs_h,
        deps = deps + ["//third_party:capnp"],
        visibility = visibility,
    )

"""capnp_cc_library: compiles Cap'n Proto schemas with the system `capnp` tool."""

def capnp_cc_library(name, srcs, deps = [], visibility = None):
    """Generates C++ for `srcs` (*.capnp in this package) and wraps it.

    Generated headers are included as "<package>/<file>.capnp.h".
    """
    outs_h = [s + ".h" for s in srcs]
    outs_cc = [s + ".c++" for s in srcs]
    native.genrule(
        name = name + "_gen",
        srcs = srcs,
        outs = outs_h + outs_cc,
        cmd = "capnp compile --no-standard-import -I/usr/include -oc++:$(GENDIR) $(SRCS)",
        message = "capnp compile " + name,
    )
    native.cc_library(
        name = name,
        srcs = outs_cc,
        hdrs = outs_h,
        deps = deps + ["//third_party:capnp"],
        visibility = visibility,
    )

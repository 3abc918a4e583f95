"""Project-wide C++ rules: the same warnings-as-errors flags on all project code.

Generated code (Cap'n Proto) and system headers are not held to -Werror; every
hand-written target goes through these wrappers.
"""

VGPU_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
]

def vgpu_cc_library(name, copts = [], **kwargs):
    native.cc_library(name = name, copts = VGPU_COPTS + copts, **kwargs)

def vgpu_cc_binary(name, copts = [], **kwargs):
    native.cc_binary(name = name, copts = VGPU_COPTS + copts, **kwargs)

def vgpu_cc_test(name, copts = [], deps = [], **kwargs):
    native.cc_test(
        name = name,
        copts = VGPU_COPTS + copts,
        deps = deps + ["//third_party:gtest_main"],
        **kwargs
    )

def vgpu_cc_fuzzer(name, srcs, deps = [], copts = [], **kwargs):
    """A libFuzzer target. Built only with --config=fuzz (tools/fuzz.sh)."""
    native.cc_binary(
        name = name,
        srcs = srcs,
        copts = VGPU_COPTS + copts,
        deps = deps,
        tags = ["manual", "fuzz"],
        **kwargs
    )

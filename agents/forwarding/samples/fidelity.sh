#!/bin/bash
# fidelity.sh: runs the OpenCL fidelity samples (vgpu-cl-samples) in a given
# environment and prints one "name digest" line per sample, or compares two
# such runs.
#
#   fidelity.sh [--binary PATH] --native [-- SAMPLE-ARGS...]
#       Runs on the system's ICDs (/etc/OpenCL/vendors): OCL_ICD_VENDORS and
#       OCL_ICD_FILENAMES are removed from the environment.
#   fidelity.sh [--binary PATH] --env VAR=VALUE [VAR=VALUE...] [-- SAMPLE-ARGS...]
#       Runs with these variables added, e.g. --env OCL_ICD_VENDORS=DIR for a
#       vendors directory holding the forwarding library's .icd file, or
#       --env OCL_ICD_FILENAMES=/path/libvgpu-opencl.so. --env may repeat.
#   fidelity.sh compare RUN_A RUN_B
#       RUN_A and RUN_B are files of "name digest" lines (the output of the
#       run modes). Prints "FIDELITY <name> SAME|DIFFERENT" for every sample
#       of either run; exits 1 when any differs or is missing from one run.
#
# SAMPLE-ARGS default to "all"; anything vgpu-cl-samples takes may be passed
# ("-- --size 1024 mandelbrot"). A sample that fails prints "name FAILED",
# one skipped on the device "name skipped". The run modes exit with
# vgpu-cl-samples' status (0: every sample ran to its end). Lines other than
# SAMPLE lines (error_codes' table, PAUSED lines) go to stderr, so stdout holds
# only the digests.
#
# The binary: --binary, else $VGPU_CL_SAMPLES, else vgpu-cl-samples next to
# this script (as in Bazel runfiles), else bazel-bin of the workspace.
#
# The script can also be sourced; it then defines fidelity_run ENV-MODE... and
# fidelity_compare A B with the same arguments as the modes above, and does
# nothing else.

_fidelity_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_fidelity_find_binary() {
  if [[ -n "${VGPU_CL_SAMPLES:-}" ]]; then
    echo "$VGPU_CL_SAMPLES"
  elif [[ -x "$_fidelity_dir/vgpu-cl-samples" ]]; then
    echo "$_fidelity_dir/vgpu-cl-samples"
  elif [[ -x "$_fidelity_dir/../../../bazel-bin/agents/forwarding/samples/vgpu-cl-samples" ]]; then
    echo "$_fidelity_dir/../../../bazel-bin/agents/forwarding/samples/vgpu-cl-samples"
  else
    return 1
  fi
}

# Reads vgpu-cl-samples' text output on stdin; writes "name digest" lines to
# stdout and every other line to stderr.
_fidelity_digests() {
  local line kind name
  while IFS= read -r line; do
    read -r kind name _ <<<"$line"
    if [[ "$kind" != SAMPLE ]]; then
      printf '%s\n' "$line" >&2
      continue
    fi
    read -r _ _ kind rest <<<"$line"
    case "$kind" in
      digest) printf '%s %s\n' "$name" "${rest%% *}" ;;
      FAILED) printf '%s FAILED\n' "$name"; printf '%s\n' "$line" >&2 ;;
      skipped) printf '%s skipped\n' "$name"; printf '%s\n' "$line" >&2 ;;
      *) printf '%s UNPARSED\n' "$name"; printf '%s\n' "$line" >&2 ;;
    esac
  done
}

fidelity_run() {
  local binary="" mode="" arg
  local -a envs=() sample_args=()
  while (($#)); do
    arg="$1"
    shift
    case "$arg" in
      --binary) binary="${1:?--binary needs a path}"; shift ;;
      --native) mode="native" ;;
      --env)
        mode="env"
        [[ $# -gt 0 && "$1" == *=* ]] || {
          echo "fidelity.sh: --env needs VAR=VALUE" >&2
          return 2
        }
        while [[ $# -gt 0 && "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
          envs+=("$1")
          shift
        done
        ;;
      --) sample_args=("$@"); break ;;
      *) echo "fidelity.sh: unknown argument '$arg'" >&2; return 2 ;;
    esac
  done
  if [[ -z "$mode" ]]; then
    echo "fidelity.sh: say --native or --env VAR=VALUE..." >&2
    return 2
  fi
  if [[ -z "$binary" ]]; then
    binary="$(_fidelity_find_binary)" || {
      echo "fidelity.sh: vgpu-cl-samples not found (pass --binary, set" \
        "VGPU_CL_SAMPLES, or bazel build //agents/forwarding/samples:vgpu-cl-samples)" >&2
      return 2
    }
  fi
  ((${#sample_args[@]})) || sample_args=(all)
  local -a cmd
  if [[ "$mode" == native ]]; then
    cmd=(env -u OCL_ICD_VENDORS -u OCL_ICD_FILENAMES "$binary" "${sample_args[@]}")
  else
    cmd=(env "${envs[@]}" "$binary" "${sample_args[@]}")
  fi
  "${cmd[@]}" | _fidelity_digests
  local status=("${PIPESTATUS[@]}")
  if ((status[0] != 0)); then
    echo "fidelity.sh: ${cmd[*]} exited ${status[0]}" >&2
  fi
  return "${status[0]}"
}

fidelity_compare() {
  if (($# != 2)); then
    echo "fidelity.sh: compare needs two run files" >&2
    return 2
  fi
  local a="$1" b="$2" name digest other differ=0
  local -A in_a=() in_b=()
  local -a order=()
  while read -r name digest _; do
    [[ -n "$name" ]] || continue
    in_a[$name]="$digest"
    order+=("$name")
  done <"$a" || return 2
  while read -r name digest _; do
    [[ -n "$name" ]] || continue
    in_b[$name]="$digest"
    [[ -n "${in_a[$name]+x}" ]] || order+=("$name")
  done <"$b" || return 2
  for name in "${order[@]}"; do
    digest="${in_a[$name]:-}"
    other="${in_b[$name]:-}"
    if [[ -z "$digest" || -z "$other" ]]; then
      echo "FIDELITY $name DIFFERENT"
      echo "fidelity.sh: $name is missing from $([[ -z "$digest" ]] && echo "$a" || echo "$b")" >&2
      differ=1
    elif [[ "$digest" == "$other" && "$digest" =~ ^[0-9a-f]{16}$ ]]; then
      echo "FIDELITY $name SAME"
    elif [[ "$digest" == skipped && "$other" == skipped ]]; then
      echo "FIDELITY $name SAME"
    else
      echo "FIDELITY $name DIFFERENT"
      echo "fidelity.sh: $name: $digest vs $other" >&2
      differ=1
    fi
  done
  return "$differ"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -uo pipefail
  if [[ "${1:-}" == compare ]]; then
    shift
    fidelity_compare "$@"
  else
    fidelity_run "$@"
  fi
  exit $?
fi

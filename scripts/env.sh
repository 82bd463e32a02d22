# Build settings shared by the scripts (sourced, not run).
#
# agentkernel is linked statically (glibc with crt-static): a CLI that runs for every command an
# agent makes should not spend its first few hundred microseconds in the dynamic loader
# (`agentkernel --version`: 1.20 ms dynamic, 0.89 ms static; `exec NAME -- true`: 3.41 ms vs
# 2.85 ms, hyperfine medians on the CI machine). Static linking needs an explicit --target, so
# that the flag is not applied to build scripts and proc-macros.
HOST_TARGET="$(rustc -vV | sed -n 's/^host: //p')"
export HOST_TARGET
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"

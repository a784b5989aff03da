#!/bin/sh
# Prints the cost of one iteration of the Rust core in units of one dense
# product Y B' (P x N times N x Q, faer) on a synthetic P = 200, N = 100000,
# Q = 8, K = 4 problem. Target: at most 4 products per iteration.
#
#   sh inst/bench/iteration_cost.sh [--iterations 20] [--threads 1]
#
# Builds and runs the example src/rust/core/examples/iteration_cost.rs in
# release mode; the example does not take part in the R package build.
set -eu
cd "$(dirname "$0")/../../src/rust"
export PATH="$PATH:$HOME/.cargo/bin"
exec cargo run --quiet --release --locked -p nmfre-core --example iteration_cost -- "$@"

#!/bin/sh
# Runs the three test stages and prints one closing line
# "N passed, N failed". Exits non-zero when anything failed.
#
#   1. cargo tests of the Rust core (each #[test] counts)
#   2. testthat against a fresh install of the package (each expectation counts)
#   3. R CMD build (which builds the vignettes) and R CMD check on the tarball;
#      the check counts as one test, failed on any ERROR or WARNING
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
R_LIB=${R_LIB:-$root/.Rlib}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/src/rust/target}"
logs=$(mktemp -d)
passed=0
failed=0

add() { passed=$((passed + $1)); failed=$((failed + $2)); }

echo "== cargo test (core crate)"
if cargo test --release --locked -p nmfre-core --manifest-path src/rust/Cargo.toml >"$logs/cargo.log" 2>&1; then :; fi
cat "$logs/cargo.log" | grep -E "^test |test result" || true
cargo_passed=$(grep -E "^test result" "$logs/cargo.log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s += $1} END {print s + 0}')
cargo_failed=$(grep -E "^test result" "$logs/cargo.log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s += $1} END {print s + 0}')
if ! grep -q "^test result" "$logs/cargo.log"; then
    tail -30 "$logs/cargo.log"
    cargo_failed=$((cargo_failed + 1))
fi
add "$cargo_passed" "$cargo_failed"

echo "== install into $R_LIB"
mkdir -p "$R_LIB"
if R CMD INSTALL --no-multiarch -l "$R_LIB" . >"$logs/install.log" 2>&1; then
    echo "installed"
    echo "== testthat"
    R_LIBS="$R_LIB" NOT_CRAN=true Rscript tools/run-testthat.R "$logs/testthat.counts" 2>&1
    if [ -f "$logs/testthat.counts" ]; then
        read -r t_passed t_failed <"$logs/testthat.counts"
        add "$t_passed" "$t_failed"
    else
        add 0 1
    fi
else
    tail -40 "$logs/install.log"
    add 0 1
fi

echo "== R CMD build and R CMD check"
rm -rf nmfre.Rcheck nmfre_*.tar.gz
if R_LIBS="$R_LIB" R CMD build . >"$logs/build.log" 2>&1; then
    tarball=$(ls nmfre_*.tar.gz)
    R_LIBS="$R_LIB" _R_CHECK_FORCE_SUGGESTS_=false R CMD check --no-manual "$tarball" >"$logs/check.log" 2>&1
    tail -25 "$logs/check.log"
    if grep -qE "^Status: .*(ERROR|WARNING)" "$logs/check.log" || ! grep -q "^Status:" "$logs/check.log"; then
        for f in nmfre.Rcheck/00install.out nmfre.Rcheck/tests/testthat.Rout.fail; do
            [ -f "$f" ] && tail -40 "$f"
        done
        add 0 1
    else
        add 1 0
    fi
else
    tail -40 "$logs/build.log"
    add 0 1
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/bin/sh
# Install the system packages that building, testing and demonstrating nmfre
# need on Debian 12: R with its development headers, the R packages named in
# DESCRIPTION, pandoc for the vignettes and GNU time (/usr/bin/time) for the
# memory figures of inst/bench/scaling.R. Cargo and rustc are not installed
# here; they come from rustup (https://rustup.rs).
set -eu

packages="r-base-dev r-cran-testthat r-cran-knitr r-cran-rmarkdown pandoc
r-cran-roxygen2 r-cran-nlme r-cran-lme4 r-cran-lavaan r-cran-generics
r-cran-broom r-cran-cli r-cran-bench r-cran-ggplot2 qpdf time"

missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all system packages are present"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing Debian packages:$missing" >&2
        echo "install-deps: run 'sudo tools/install-deps.sh' or install them with apt-get" >&2
        exit 1
    fi
    echo "install-deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install the Rust toolchain from https://rustup.rs" >&2
    exit 1
fi

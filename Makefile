# Set-up, demonstration and test entry points; see README.md.
#
#   make demo   install missing system packages, install nmfre, fit Orthodont
#   make test   cargo tests, testthat and R CMD check; ends "N passed, N failed"
#   make stress the df cap stress study (500 replicates, several minutes; not
#               part of make test)

R_LIB ?= $(CURDIR)/.Rlib
export CARGO_TARGET_DIR ?= $(CURDIR)/src/rust/target

.PHONY: deps install demo test stress docs clean

deps:
	sh tools/install-deps.sh

install: deps
	mkdir -p $(R_LIB)
	R CMD INSTALL --no-multiarch -l $(R_LIB) .

demo: install
	R_LIBS=$(R_LIB) Rscript -e 'library(nmfre); demo("orthodont", package = "nmfre", ask = FALSE, echo = FALSE)'

test: deps
	R_LIB=$(R_LIB) sh tools/run-tests.sh

stress: install
	R_LIBS=$(R_LIB) Rscript inst/validation/stress.R 500 500

docs:
	Rscript -e 'roxygen2::roxygenise(load_code = "source")'

clean:
	rm -rf $(R_LIB) nmfre.Rcheck nmfre_*.tar.gz src/*.o src/*.so

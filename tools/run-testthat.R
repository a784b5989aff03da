# Runs the testthat suite against the installed package and writes
# "passed failed" to the file named by the first argument.
args <- commandArgs(trailingOnly = TRUE)
library(testthat)
library(nmfre)
results <- as.data.frame(test_dir("tests/testthat", package = "nmfre",
                                  load_package = "installed",
                                  reporter = ProgressReporter$new(show_praise = FALSE),
                                  stop_on_failure = FALSE))
passed <- sum(results$passed)
failed <- sum(results$failed) + sum(results$error)
cat(sprintf("testthat: %d expectations passed, %d failed or errored\n", passed, failed))
writeLines(paste(passed, failed), args[1])

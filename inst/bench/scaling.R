# Measures how nmfre's time per iteration and peak memory grow with the
# number of units N (P = 50, rank 5, K = 2, N = 1e3 .. 1e6), prints a table,
# the fitted slope of log time against log N and the peak memory relative
# to the size of Y (8 P N bytes).
#
# Run from anywhere after installing nmfre, for example from the package
# root:
#   R CMD INSTALL --no-multiarch -l .Rlib .
#   R_LIBS=$PWD/.Rlib Rscript inst/bench/scaling.R
# Environment: NMFRE_BENCH_SIZES overrides the values of N (comma
# separated, e.g. "1e3,1e4"); NMFRE_BENCH_THREADS sets the core's threads
# (default 1, so that the slope does not mix thread counts).
#
# Each size runs in its own Rscript process under /usr/bin/time -v (Debian
# package `time`, installed by tools/install-deps.sh), so "peak" is the
# maximum resident set size of a process that simulates Y and fits it. The
# process also reports its peak before the fit (after simulating Y), from
# VmHWM in /proc/self/status. The fit uses the default start (NNDSVDar),
# df_rate 0.1 and epsilon = 0. Time per iteration is
# (t(3 + m) - t(3)) / m with m = max(30, 1e7 / N), so the start and the
# other fixed costs do not count.
#
# Targets: slope near 1 (linear in N); peak memory at N = 1e6 under
# 3 x the size of Y.

script_directory <- function() {
  file <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
  if (length(file) == 1L) normalizePath(file) else "inst/bench/scaling.R"
}

P <- 50
Q <- 5
K <- 2
WARM_ITERATIONS <- 3

# Peak resident set size of this process so far, in kB (Linux only).
peak_kb <- function() {
  status <- readLines("/proc/self/status")
  as.numeric(gsub("[^0-9]", "", grep("^VmHWM:", status, value = TRUE)))
}

# Child: simulates one size, fits it twice and prints one RESULT line.
run_child <- function(N, threads) {
  suppressPackageStartupMessages(library(nmfre))
  source(file.path(dirname(script_directory()), "synthetic.R"))
  data <- simulate_problem(P = P, N = N, Q = Q, K = K, seed = 1)
  invisible(gc())
  before_fit_kb <- peak_kb()
  iterations <- max(30, round(1e7 / N))
  time_fit <- function(maxit) {
    control <- nmfre_control(maxit = maxit, epsilon = 0, inference = FALSE,
                             threads = threads)
    # epsilon = 0 always ends unconverged; that warning is expected.
    seconds <- system.time(
      suppressWarnings(nmfre(data$Y, data$A, rank = Q, df_rate = 0.1, control = control))
    )[["elapsed"]]
    invisible(gc())
    seconds
  }
  short <- time_fit(WARM_ITERATIONS)
  long <- time_fit(WARM_ITERATIONS + iterations)
  cat(sprintf("RESULT %.0f %d %.6f %.6f %.0f\n", N, iterations, short, long, before_fit_kb))
}

# Parent: runs one child per size under /usr/bin/time -v and parses both.
run_size <- function(N, threads) {
  rscript <- file.path(R.home("bin"), "Rscript")
  stderr_file <- tempfile()
  on.exit(unlink(stderr_file))
  output <- suppressWarnings(system2(
    "/usr/bin/time",
    c("-v", shQuote(rscript), shQuote(script_directory()), "--child",
      format(N, scientific = FALSE), threads),
    stdout = TRUE, stderr = stderr_file
  ))
  report <- readLines(stderr_file)
  result <- grep("^RESULT ", output, value = TRUE)
  if (length(result) != 1L) {
    stop(sprintf("The run for N = %g failed:\n%s", N,
                 paste(c(output, tail(report, 30)), collapse = "\n")), call. = FALSE)
  }
  fields <- as.numeric(strsplit(result, " ")[[1]][-1])
  peak <- grep("Maximum resident set size", report, value = TRUE)
  peak_kb <- as.numeric(sub(".*: *", "", peak))
  data.frame(N = N, iterations = fields[2],
             ms_per_iteration = 1000 * (fields[4] - fields[3]) / fields[2],
             Y_MB = 8 * P * N / 2^20, before_fit_MB = fields[5] / 1024,
             peak_MB = peak_kb / 1024)
}

run_parent <- function() {
  if (!file.exists("/usr/bin/time")) {
    stop("/usr/bin/time is missing; install the Debian package `time` (tools/install-deps.sh).",
         call. = FALSE)
  }
  sizes <- as.numeric(strsplit(Sys.getenv("NMFRE_BENCH_SIZES", "1e3,1e4,1e5,1e6"), ",")[[1]])
  threads <- as.integer(Sys.getenv("NMFRE_BENCH_THREADS", "1"))
  cat(sprintf("Scaling in N: P = %d, rank = %d, K = %d, threads = %d\n", P, Q, K, threads))
  table <- do.call(rbind, lapply(sizes, run_size, threads = threads))
  table$peak_over_Y <- table$peak_MB / table$Y_MB
  table$before_fit_over_Y <- table$before_fit_MB / table$Y_MB
  print(format(table, digits = 3), row.names = FALSE)

  slope <- unname(coef(lm(log(ms_per_iteration) ~ log(N), data = table))[2])
  cat(sprintf("\nslope of log(time per iteration) on log(N): %.3f (target: near 1, linear)\n",
              slope))
  if (nrow(table) > 1L) {
    steps <- table$ms_per_iteration[-1] / table$ms_per_iteration[-nrow(table)] /
      (table$N[-1] / table$N[-nrow(table)])
    cat(sprintf("time ratio per unit growth of N, step by step: %s (1 = linear)\n",
                paste(sprintf("%.2f", steps), collapse = ", ")))
  }
  largest <- table[which.max(table$N), ]
  cat(sprintf("peak memory at N = %g: %.0f MB = %.2f x size of Y (%.0f MB); target < 3 -> %s\n",
              largest$N, largest$peak_MB, largest$peak_over_Y, largest$Y_MB,
              if (largest$peak_over_Y < 3) "met" else "NOT met"))
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) >= 1L && args[1] == "--child") {
  run_child(as.numeric(args[2]), as.integer(args[3]))
} else {
  run_parent()
}

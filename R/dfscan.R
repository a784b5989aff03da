# Scan of df cap rates: nmfre_dfscan(), its print and plot methods, and the
# automatic choice of the rate behind nmfre(df_rate = NULL).

# dfU / cap at or above which a cap counts as binding at the end of a fit,
# and the ratio from which the status changes from GOOD to BETTER.
DFSCAN_BINDING_RATIO <- 0.99
DFSCAN_BETTER_RATIO <- 0.8
DFSCAN_DEFAULT_RATES <- seq(0.1, 1, by = 0.1)

#' Scan df cap rates
#'
#' Fits the model once per cap rate and tabulates, for each, how much of its
#' cap the random effects' effective degrees of freedom dfU use at the end.
#' The table shows where the cap binds and is the input of the automatic
#' choice that `nmfre(df_rate = NULL)` makes.
#'
#' The fits run in parallel in the Rust core, one thread per fit, and all
#' start from the same NNDSVDar start. Each row therefore equals a single
#' [nmfre()] fit with that `df_rate` and the same `control` run on one
#' thread (the default below a million cells in Y), and the table does not
#' depend on the number of threads.
#'
#' Status: `GOOD` when `ratio = dfU / cap` is below 0.8, `BETTER` from 0.8 up
#' to 0.99, and `NG` from 0.99, where the cap binds: the random effects
#' would take more degrees of freedom if the cap allowed it, and standard
#' errors depend on the cap.
#'
#' With the cap on, tau2 keeps its starting value (`tau2_start`, 1 by
#' default) except when the cap lowers it, so lambda = sigma2 / tau2 follows
#' the scale of Y: multiplying Y by c multiplies sigma2 by c^2 but leaves
#' tau2 alone. Whether and where the cap binds therefore depends on the
#' units of Y and on `tau2_start`; scan on the scale you will fit on.
#'
#' Automatic choice: among converged fits whose final ratio is below 0.99,
#' the largest rate whose cap was hit (raised lambda) at some iteration; if
#' no such fit hit its cap, the smallest of them. It is stored as the
#' attribute `"chosen_rate"`, `NA` when no rate qualifies.
#'
#' @param Y A non-negative numeric matrix or data frame, P measurements by N
#'   units, as for [nmfre()].
#' @param A,rank,theta,control As for [nmfre()]. `control` must keep the cap
#'   on (`use_cap = TRUE`) and leave `df_cap` unset, because the scan sets
#'   the cap from each rate. `threads` in `control` sets how many fits run at
#'   once; `NULL` uses one thread per rate, up to the number of cores.
#' @param rates Cap rates to fit, each in (0, 1]; sorted, duplicates dropped.
#' @param ... Further arguments for methods. A formula method, which will
#'   build `Y` and `A` from a formula and data as `nmfre()` does, is not
#'   available yet.
#' @return A data frame of class `"nmfre_dfscan"`, one row per rate, with
#'   columns `rate`, `cap` (`max(rate * N * rank, 1)`), `dfU` (at the end of
#'   the fit), `ratio` (`dfU / cap`), `status`, `hit` (whether the cap raised
#'   lambda at any iteration), `first_hit` (the first such iteration, `NA`
#'   when never), `converged`, `iterations`, `sigma2`, `tau2` and `ICC`, the
#'   trace-based intraclass correlation
#'   `tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)`. Attributes: `chosen_rate`,
#'   `choice` (`"hit"`, `"smallest"` or `"none"`, the branch of the rule
#'   that chose), `units` (N), `rank`, `errors` (messages of fits that
#'   failed, named by rate; their rows are `NA` and never chosen) and `call`.
#' @seealso [nmfre()] with `df_rate = NULL`, which runs this scan over
#'   `seq(0.1, 1, by = 0.1)` and keeps the table in `fit$dfscan`.
#' @examples
#' data(Orthodont, package = "nlme")
#' Y <- matrix(Orthodont$distance, nrow = 4)
#' male <- as.numeric(Orthodont$Sex[seq(1, 108, by = 4)] == "Male")
#' A <- rbind("(Intercept)" = 1, male = male)
#' # A large starting tau2 makes lambda small, so the caps are hit at once.
#' scan <- nmfre_dfscan(Y, A, rank = 1, rates = c(0.1, 0.2, 0.3, 0.5),
#'                      control = nmfre_control(tau2_start = 100))
#' scan
#' attr(scan, "chosen_rate")
#' plot(scan)
#' @export
nmfre_dfscan <- function(Y, ...) {
  UseMethod("nmfre_dfscan")
}

#' @rdname nmfre_dfscan
#' @param data,subset,na.action,unit,occasion For the formula method, as in
#'   [nmfre.formula()]: the data frame, the units to keep, the handling of
#'   missing values, and for long layout the unit and occasion columns.
#' @export
nmfre_dfscan.formula <- function(Y, data = NULL, rank = 2, rates = seq(0.1, 1, by = 0.1),
                                 theta = c("nonneg", "free"), control = nmfre_control(),
                                 subset, na.action, unit = NULL, occasion = NULL, ...) {
  call <- match.call()
  check_no_dots(...)
  theta <- match_option(theta, "theta", c("nonneg", "free"))
  built <- formula_design(Y, data, theta, call$subset, na.action, unit, occasion,
                          parent.frame())
  scan <- nmfre_dfscan.default(built$design$Y, built$A, rank = rank, rates = rates,
                               theta = theta, control = control)
  attr(scan, "call") <- call
  scan
}

#' @rdname nmfre_dfscan
#' @export
nmfre_dfscan.default <- function(Y, A = NULL, rank = 2, rates = seq(0.1, 1, by = 0.1),
                                 theta = c("nonneg", "free"),
                                 control = nmfre_control(), ...) {
  call <- match.call()
  check_no_dots(...)
  theta <- match_option(theta, "theta", c("nonneg", "free"))
  control <- check_scan_control(check_control(control))
  Y <- check_response(Y)
  A <- check_covariates(A, ncol(Y), theta)
  rank <- check_rank(rank, nrow(Y), ncol(Y))
  rates <- check_rates(rates)
  scan <- scan_df_rates(Y, A, rank, rates, theta, control)
  attr(scan, "call") <- call
  scan
}

check_scan_control <- function(control) {
  if (!isTRUE(control$use_cap) || !is.null(control$df_cap)) {
    stop(paste0("`control` switches the cap off (use_cap = FALSE) or sets an absolute ",
                "cap (df_cap), but the scan sets the cap from each rate. Keep the ",
                "defaults use_cap = TRUE and df_cap = NULL."), call. = FALSE)
  }
  control
}

check_rates <- function(rates) {
  if (!is.numeric(rates) || length(rates) == 0L || anyNA(rates) ||
      any(rates <= 0 | rates > 1)) {
    stop(sprintf(paste0("`rates` must be a numeric vector of cap rates in (0, 1], ",
                        "such as seq(0.1, 1, by = 0.1), not %s."),
                 describe_value(rates)), call. = FALSE)
  }
  sort(unique(as.double(rates)))
}

# Fits at every rate in the Rust core and assembles the "nmfre_dfscan" table.
# Limitation: tau2 only falls from tau2_start while the cap is on, so the
# table, and the automatic choice made from it, change with the units of Y.
scan_df_rates <- function(Y, A, rank, rates, theta, control) {
  options <- fit_options(Y, A, rank, rates[1], theta, control)
  options$threads <- scan_threads(control$threads, length(rates))
  if (control$verbose) {
    message(sprintf("Scanning %d cap rates: P = %d, N = %d, rank = %d, %d thread(s).",
                    length(rates), nrow(Y), ncol(Y), rank, options$threads))
  }
  raw <- rust_scan(Y, A, options, rates, control$verbose)
  scan <- scan_table(raw$fits, ncol(Y), rank)

  errors <- attr(scan, "errors")
  if (length(errors) > 0L) {
    warning(sprintf(paste0("The fit failed at cap rate(s) %s: %s. Their rows are NA ",
                           "and the automatic choice skips them."),
                    paste(names(errors), collapse = ", "),
                    paste(unique(errors), collapse = "; ")), call. = FALSE)
  }
  choice <- apply_df_rate_rule(scan)
  attr(scan, "chosen_rate") <- choice$rate
  attr(scan, "choice") <- choice$basis
  scan
}

# One fit per rate: as many threads as rates, up to the number of cores.
scan_threads <- function(threads, count) {
  if (!is.null(threads)) return(as.integer(threads))
  cores <- parallel::detectCores(logical = FALSE)
  if (is.na(cores) || cores < 1) cores <- 1L
  as.integer(min(count, cores))
}

# Builds the scan table from the bridge's per-rate lists; failed fits give
# rows of NA (converged FALSE) and an entry in attr(, "errors").
scan_table <- function(fits, units, rank) {
  ok <- vapply(fits, function(entry) isTRUE(entry$ok), logical(1))
  field <- function(name) {
    vapply(fits, function(entry) {
      if (isTRUE(entry$ok)) as.double(entry[[name]]) else NA_real_
    }, double(1))
  }
  rate <- vapply(fits, function(entry) as.double(entry$rate), double(1))
  cap <- field("cap")
  dfU <- field("dfU")
  ratio <- dfU / cap

  scan <- data.frame(
    rate = rate, cap = cap, dfU = dfU, ratio = ratio,
    status = df_status(ratio),
    hit = ifelse(ok, field("cap_hits") > 0, NA),
    first_hit = as.integer(field("cap_first_hit")),
    converged = ok & vapply(fits, function(entry) isTRUE(entry$converged), logical(1)),
    iterations = as.integer(field("iterations")),
    sigma2 = field("sigma2"), tau2 = field("tau2"), ICC = field("icc"),
    stringsAsFactors = FALSE
  )
  errors <- vapply(fits[!ok], function(entry) as.character(entry$error), character(1))
  names(errors) <- format(rate[!ok])
  structure(scan, class = c("nmfre_dfscan", "data.frame"), units = units,
            rank = rank, errors = errors)
}

# Labels dfU / cap: GOOD below 0.8, BETTER from 0.8, NG from 0.99 (binding).
df_status <- function(ratio) {
  status <- ifelse(ratio >= DFSCAN_BINDING_RATIO, "NG",
                   ifelse(ratio >= DFSCAN_BETTER_RATIO, "BETTER", "GOOD"))
  status[is.na(ratio)] <- NA_character_
  status
}

# Applies the automatic rule to a scan table with columns rate, ratio, hit
# and converged. Returns list(rate, basis): basis "hit" when the rate is
# the largest qualifying one whose cap was hit, "smallest" when no
# qualifying fit hit its cap, and "none" (rate NA) when no fit qualifies.
apply_df_rate_rule <- function(scan) {
  required <- c("rate", "ratio", "hit", "converged")
  missing <- setdiff(required, names(scan))
  if (!is.data.frame(scan) || length(missing) > 0L) {
    stop(sprintf("`scan` must be a data frame with columns %s; %s missing.",
                 paste(required, collapse = ", "),
                 paste(missing, collapse = ", ")), call. = FALSE)
  }
  qualifies <- scan$converged %in% TRUE & !is.na(scan$ratio) &
    scan$ratio < DFSCAN_BINDING_RATIO
  if (!any(qualifies)) {
    return(list(rate = NA_real_, basis = "none"))
  }
  hit <- qualifies & scan$hit %in% TRUE
  if (any(hit)) {
    return(list(rate = max(scan$rate[hit]), basis = "hit"))
  }
  list(rate = min(scan$rate[qualifies]), basis = "smallest")
}

# The automatic rule as nmfre(df_rate = NULL) uses it: the chosen rate, or
# an error that shows the table when no rate qualifies.
select_df_rate <- function(scan) {
  choice <- apply_df_rate_rule(scan)
  if (is.na(choice$rate)) {
    table <- paste(utils::capture.output(print(as.data.frame(scan), row.names = FALSE)),
                   collapse = "\n")
    stop(paste0("No cap rate qualifies for the automatic choice of `df_rate`: a rate ",
                "qualifies when its fit converged and dfU stays below 99% of the cap ",
                "at the end. The scan gave\n", table, "\nSet `df_rate` yourself, or ",
                "raise `maxit` in nmfre_control() if the fits did not converge."),
         call. = FALSE)
  }
  choice$rate
}

# Runs the default scan for nmfre(df_rate = NULL) and returns the chosen
# rate with the scan table attached as attribute "dfscan".
choose_df_rate <- function(Y, A, rank, theta, control) {
  scan <- scan_df_rates(Y, A, rank, DFSCAN_DEFAULT_RATES, theta, control)
  rate <- select_df_rate(scan)
  if (control$verbose) {
    message(sprintf("Automatic choice: %s.", describe_choice(scan)))
  }
  structure(rate, dfscan = scan)
}

describe_choice <- function(scan) {
  rate <- format(attr(scan, "chosen_rate"))
  switch(attr(scan, "choice"),
    hit = sprintf(paste0("df_rate = %s, the largest rate whose cap was hit during ",
                         "the fit and does not bind at the end"), rate),
    smallest = sprintf(paste0("df_rate = %s, the smallest rate that does not bind, ",
                              "because no such rate hit its cap"), rate),
    none = "none, because every fit either did not converge or binds at the end"
  )
}

#' @export
print.nmfre_dfscan <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  units <- attr(x, "units")
  rank <- attr(x, "rank")
  if (!is.null(units) && !is.null(rank)) {
    cat(sprintf("df cap scan: N = %d units, rank %d; dfU is at most N * rank = %d\n",
                units, rank, units * rank))
  }
  print.data.frame(x, digits = digits, row.names = FALSE)
  cat("Status: GOOD dfU/cap < 0.8, BETTER 0.8 to 0.99, NG >= 0.99 (the cap binds).\n")
  if (!is.null(attr(x, "choice"))) {
    cat(sprintf("Automatic choice: %s.\n", describe_choice(x)))
  }
  errors <- attr(x, "errors")
  if (length(errors) > 0L) {
    cat(sprintf("Failed fits: %s\n", paste0("rate ", names(errors), ": ", errors,
                                            collapse = "; ")))
  }
  invisible(x)
}

#' Plot a df cap scan
#'
#' Plots `dfU / cap` against the cap rate, with the status thresholds 0.8
#' and 0.99 as horizontal lines. Filled points mark rates whose cap was hit
#' during the fit; a vertical line marks the automatic choice.
#'
#' @param x A scan from [nmfre_dfscan()].
#' @param main,xlab,ylab Title and axis labels.
#' @param ... Further graphical parameters for [graphics::plot()].
#' @return `x`, invisibly.
#' @examples
#' data(Orthodont, package = "nlme")
#' Y <- matrix(Orthodont$distance, nrow = 4)
#' scan <- nmfre_dfscan(Y, rank = 1, rates = c(0.1, 0.3, 0.6, 1),
#'                      control = nmfre_control(tau2_start = 100))
#' plot(scan)
#' @export
plot.nmfre_dfscan <- function(x, main = "df cap scan", xlab = "cap rate",
                              ylab = "dfU / cap", ...) {
  ratio <- x$ratio
  upper <- max(1.05, ratio, na.rm = TRUE)
  graphics::plot(x$rate, ratio, type = "b", ylim = c(0, upper),
                 pch = ifelse(x$hit %in% TRUE, 19, 1),
                 main = main, xlab = xlab, ylab = ylab, ...)
  graphics::abline(h = c(DFSCAN_BETTER_RATIO, DFSCAN_BINDING_RATIO),
                   lty = c(3, 2), col = "grey40")
  graphics::text(graphics::par("usr")[1], c(DFSCAN_BETTER_RATIO, DFSCAN_BINDING_RATIO),
                 labels = c("BETTER from 0.8", "NG (binding) from 0.99"),
                 adj = c(-0.05, 1.4), cex = 0.75, col = "grey30")
  chosen <- attr(x, "chosen_rate")
  legend_text <- c("cap hit during the fit", "cap never hit")
  legend_pch <- c(19, 1)
  legend_lty <- c(0, 0)
  if (!is.null(chosen) && !is.na(chosen)) {
    graphics::abline(v = chosen, lty = 4, col = "steelblue")
    legend_text <- c(legend_text, sprintf("automatic choice (%s)", format(chosen)))
    legend_pch <- c(legend_pch, NA)
    legend_lty <- c(legend_lty, 4)
  }
  graphics::legend("bottomright", legend = legend_text, pch = legend_pch,
                   lty = legend_lty, col = c("black", "black", "steelblue")[seq_along(legend_text)],
                   bty = "n", cex = 0.8)
  invisible(x)
}

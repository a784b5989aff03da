# broom-style tidiers on the generics package's tidy(), glance() and
# augment(). They return plain data frames, one row per coefficient, per fit
# and per cell of Y respectively.

#' Tidy the coefficients of an nmfre fit
#'
#' @param x An `"nmfre"` fit.
#' @param effects `"fixed"` for the Theta coefficients, `"ran_pars"` for the
#'   standard deviations of the random effects and the residual, or both.
#' @param conf.int Add confidence limits from [confint.nmfre()].
#' @param conf.level Confidence level of those limits.
#' @param conf.method `"Wald"` or `"boot"`, as in [confint.nmfre()].
#' @param ... Unused.
#' @return A data frame with columns `effect`, `term` (`basis:covariate`
#'   for Theta, as in the coefficient table), `basis`, `covariate`,
#'   `estimate`, `std.error`, `statistic` (z), `p.value` and, with
#'   `conf.int = TRUE`, `conf.low` and `conf.high`. Standard errors and
#'   tests are `NA` for a fit without inference and for the variance rows.
#' @examples
#' data(Orthodont, package = "nlme")
#' orthodont <- as.data.frame(Orthodont)
#' orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
#' fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1, df_rate = 0.21)
#' tidy(fit, conf.int = TRUE)
#' glance(fit)
#' head(augment(fit))
#' @export
tidy.nmfre <- function(x, effects = "fixed", conf.int = FALSE, conf.level = 0.95,
                       conf.method = c("Wald", "boot"), ...) {
  if (!is.character(effects) || length(effects) == 0L ||
      !all(effects %in% c("fixed", "ran_pars"))) {
    stop("`effects` must be \"fixed\", \"ran_pars\" or both.", call. = FALSE)
  }
  check_flag(conf.int, "conf.int")
  conf.method <- match_option(conf.method, "conf.method", c("Wald", "boot"))
  parts <- list()
  if ("fixed" %in% effects) parts$fixed <- tidy_fixed(x, conf.int, conf.level, conf.method)
  if ("ran_pars" %in% effects) parts$ran_pars <- tidy_ran_pars(x, conf.int)
  table <- do.call(rbind, unname(parts))
  rownames(table) <- NULL
  table
}

tidy_fixed <- function(x, conf.int, conf.level, conf.method) {
  labels <- coefficient_labels(x)
  grid <- expand.grid(basis = rownames(x$Theta), covariate = colnames(x$Theta),
                      stringsAsFactors = FALSE)
  table <- data.frame(effect = "fixed", term = labels, basis = grid$basis,
                      covariate = grid$covariate, estimate = as.double(x$Theta),
                      std.error = NA_real_, statistic = NA_real_, p.value = NA_real_,
                      stringsAsFactors = FALSE)
  coefficients <- x$inference$coefficients
  if (!is.null(coefficients)) {
    table$std.error <- unname(coefficients[labels, "Std. Error"])
    table$statistic <- unname(coefficients[labels, "z value"])
    p_column <- grep("^Pr\\(", colnames(coefficients), value = TRUE)
    table$p.value <- unname(coefficients[labels, p_column])
  }
  if (conf.int) {
    bounds <- confint(x, level = conf.level, method = conf.method)
    table$conf.low <- unname(bounds[labels, 1L])
    table$conf.high <- unname(bounds[labels, 2L])
  }
  table
}

tidy_ran_pars <- function(x, conf.int) {
  table <- data.frame(effect = "ran_pars", term = c("sd__Unit", "sd__Residual"),
                      basis = NA_character_, covariate = NA_character_,
                      estimate = sqrt(c(x$tau2, x$sigma2)), std.error = NA_real_,
                      statistic = NA_real_, p.value = NA_real_, stringsAsFactors = FALSE)
  if (conf.int) {
    table$conf.low <- NA_real_
    table$conf.high <- NA_real_
  }
  table
}

#' Summarise an nmfre fit in one row
#'
#' @param x An `"nmfre"` fit.
#' @param ... Unused.
#' @return A one-row data frame: `nobs` (units N), `n_measurements` (P),
#'   `rank`, `sigma`, `tau`, `lambda`, `icc`, `dfU`, `df_cap`, `cap_ratio`,
#'   `logLik`, `AIC`, `BIC` (see [logLik.nmfre()]), `iterations`,
#'   `converged` and `objective` (final value).
#' @rdname tidy.nmfre
#' @export
glance.nmfre <- function(x, ...) {
  log_likelihood <- logLik(x)
  data.frame(
    nobs = ncol(x$Y), n_measurements = nrow(x$Y), rank = x$rank,
    sigma = sqrt(x$sigma2), tau = sqrt(x$tau2), lambda = x$lambda,
    icc = intraclass_correlation(x$X, x$tau2, x$sigma2),
    dfU = x$dfU, df_cap = x$cap$value, cap_ratio = x$cap$ratio,
    logLik = as.double(log_likelihood), AIC = stats::AIC(log_likelihood),
    BIC = stats::BIC(log_likelihood), iterations = x$iterations,
    converged = x$converged, objective = utils::tail(x$objective, 1)
  )
}

#' Augment data with fitted values and residuals of an nmfre fit
#'
#' Returns one row per cell of Y (measurement and unit), with the
#' observation, the fitted values and the residuals.
#'
#' Without `data`, the unit covariates stored by a formula fit are joined
#' to each row. With `data` from a long-layout formula fit, the result is
#' `data` itself with the columns added, matched by unit and occasion (rows
#' not in the fit get `NA`). With `data` from a wide-layout fit, its rows
#' are matched to the units by row name and joined to each row.
#'
#' @param data Optional data frame to attach the results to; see Details.
#' @return A data frame with columns `.unit`, `.measurement`, `.observed`,
#'   `.fitted` (`X (Theta A + U)`), `.fixed` (`X Theta A`), `.resid`
#'   (observed minus `.fitted`), and the joined covariates.
#' @rdname tidy.nmfre
#' @export
augment.nmfre <- function(x, data = NULL, ...) {
  cells <- long_cells(x)
  if (!is.null(data) && identical(x$layout$type, "long")) {
    return(augment_long_data(x, data, cells))
  }
  covariates <- if (is.null(data)) x$model else as.data.frame(data)
  if (!is.null(covariates)) {
    rows <- match(cells$.unit, rownames(covariates))
    joined <- covariates[rows, setdiff(names(covariates), names(cells)), drop = FALSE]
    cells <- cbind(cells, joined)
  }
  rownames(cells) <- NULL
  cells
}

long_cells <- function(x) {
  P <- nrow(x$Y)
  N <- ncol(x$Y)
  units <- colnames(x$Y)
  if (is.null(units)) units <- as.character(seq_len(N))
  measurements <- rownames(x$Y)
  if (is.null(measurements)) measurements <- as.character(seq_len(P))
  fitted <- fitted_matrix(x, "blup")
  fixed <- fitted_matrix(x, "fixed")
  data.frame(.unit = rep(units, each = P), .measurement = rep(measurements, times = N),
             .observed = as.double(x$Y), .fitted = as.double(fitted),
             .fixed = as.double(fixed), .resid = as.double(x$Y - fitted),
             stringsAsFactors = FALSE)
}

augment_long_data <- function(x, data, cells) {
  layout <- x$layout
  units <- unit_keys(eval(layout$unit[[2L]], data, environment(layout$unit)))
  occasions <- eval(layout$occasion[[2L]], data, environment(layout$occasion))
  row <- match(occasions, layout$occasions)
  column <- match(units, colnames(x$Y))
  cell <- ifelse(is.na(row) | is.na(column), NA_integer_, (column - 1L) * nrow(x$Y) + row)
  out <- as.data.frame(data)
  for (name in c(".fitted", ".fixed", ".resid")) out[[name]] <- cells[[name]][cell]
  out
}

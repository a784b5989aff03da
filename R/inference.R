# Inference on Theta conditional on the fitted X and U: sandwich and
# model-based covariances and the multiplier bootstrap, computed in Rust;
# tables, tests and intervals assembled here.

#' Inference on Theta for an nmfre fit
#'
#' Recomputes standard errors, p-values, intervals and bootstrap replicates
#' for Theta on an existing fit with other settings, without refitting.
#'
#' Inference conditions on the fitted X and U. With `Ystar = Y - X U` the
#' working model is `Ystar = X Theta A + E`. The residual variance is
#' `RSS / (PN - dfU - QK)` by default; the information is
#' `kron(A A', X'X - X'X M^{-1} X'X) / sigma2` with `M = X'X + lambda I`;
#' unit n contributes the score `s_n = -vec(X' r_n a_n') / sigma2`. The
#' sandwich covariance is `H J H` with `H` the inverse information and
#' `J = N/(N-1) sum_n s_n s_n'`. Bootstrap replicate b is the one-step
#' Newton update `theta - H sum_n w_nb s_n` with i.i.d. multiplier weights
#' of mean 0 and variance 1, projected onto Theta >= 0 for non-negative
#' Theta.
#'
#' For non-negative Theta the default p-value is one-sided, for the boundary
#' null Theta = 0 against Theta > 0: `1 - pnorm(z)`. For sign-free Theta it
#' is two-sided.
#'
#' @param fit An `"nmfre"` fit.
#' @param ... Settings of [nmfre_control()] to change, such as `B`,
#'   `weights`, `level`, `boot_seed`, `sigma2_rule`, `information`, `se`,
#'   `p_side` and `keep_replicates`; also `project` (`TRUE` or `FALSE`) to
#'   override the projection of bootstrap replicates onto Theta >= 0.
#' @return The fit with its `inference` element replaced.
#' @examples
#' data(Orthodont, package = "nlme")
#' Y <- matrix(Orthodont$distance, nrow = 4)
#' male <- as.numeric(Orthodont$Sex[seq(1, 108, by = 4)] == "Male")
#' fit <- nmfre(Y, rbind("(Intercept)" = 1, male = male), rank = 1,
#'              df_rate = 0.21, control = nmfre_control(B = 200))
#' fit2 <- nmfre_inference(fit, B = 1000, weights = "rademacher")
#' fit2$inference$coefficients
#' @export
nmfre_inference <- function(fit, ...) {
  check_fit(fit)
  changes <- list(...)
  project <- changes$project
  changes$project <- NULL
  if (!is.null(project)) check_flag(project, "project")
  if (length(changes) > 0L && (is.null(names(changes)) || any(names(changes) == ""))) {
    stop("Settings passed to nmfre_inference() must be named, for example B = 1000.",
         call. = FALSE)
  }
  unknown <- setdiff(names(changes), names(formals(nmfre_control)))
  if (length(unknown) > 0L) {
    stop(sprintf("Unknown setting(s) %s; see ?nmfre_control for the valid names.",
                 paste0("`", unknown, "`", collapse = ", ")), call. = FALSE)
  }
  settings <- unclass(fit$control)
  settings[names(changes)] <- changes
  settings$inference <- TRUE
  control <- do.call(nmfre_control, settings)
  fit$control <- control
  fit$inference <- compute_inference(fit, control, project = project)
  fit
}

check_fit <- function(fit) {
  if (!inherits(fit, "nmfre")) {
    stop("`fit` must be an \"nmfre\" object returned by nmfre().", call. = FALSE)
  }
}

compute_inference <- function(fit, control, project = NULL) {
  if (is.null(project)) project <- fit$theta == "nonneg"
  p_side <- control$p_side
  if (is.null(p_side)) p_side <- if (fit$theta == "nonneg") "one-sided" else "two-sided"
  options <- list(
    sigma2_rule = control$sigma2_rule, information = control$information,
    B = control$B, weights = control$weights, boot_seed = control$boot_seed,
    project = project, level = control$level,
    threads = resolve_threads(control$threads, length(fit$Y))
  )
  # Inference is computed on the scale the fit used internally and mapped
  # back: estimates and SEs scale with Y, variances with its square.
  scale <- if (is.null(fit$scale)) 1 else fit$scale
  fitted <- list(rank = fit$rank, X = as.double(fit$X),
                 Theta = as.double(fit$Theta) / scale,
                 U = as.double(fit$U) / scale, lambda = fit$lambda)
  raw <- rust_infer(if (scale == 1) fit$Y else fit$Y / scale, fit$A, fitted, options)
  # Standard errors come from the scaled covariance so that they stay finite
  # where the variances themselves overflow.
  se_scaled <- sqrt(pmax(diag(switch(control$se,
    sandwich = raw$sandwich,
    model = raw$H,
    max = pmax(raw$sandwich, raw$H)
  )), 0))
  raw <- unscale_inference(raw, scale)

  labels <- coefficient_labels(fit)
  name_matrix <- function(M) {
    dimnames(M) <- list(labels, labels)
    M
  }
  vcov_sandwich <- name_matrix(raw$sandwich)
  vcov_model <- name_matrix(raw$H)
  vcov_chosen <- switch(control$se,
    sandwich = vcov_sandwich,
    model = vcov_model,
    max = choose_larger_variance(vcov_sandwich, vcov_model)
  )

  bootstrap <- NULL
  if (!is.null(raw$bootstrap)) {
    bootstrap <- list(se = setNames(raw$bootstrap$se, labels),
                      lower = setNames(raw$bootstrap$lower, labels),
                      upper = setNames(raw$bootstrap$upper, labels),
                      replicates = NULL)
    if (control$keep_replicates) {
      replicates <- raw$bootstrap$replicates
      colnames(replicates) <- labels
      bootstrap$replicates <- replicates
    }
  }

  inference <- list(
    sigma2 = raw$sigma2, rss = raw$rss, dfU = raw$dfU, trace_hat = raw$trace_hat,
    vcov = vcov_chosen, vcov_sandwich = vcov_sandwich, vcov_model = vcov_model,
    information = name_matrix(raw$information), bootstrap = bootstrap,
    se_type = control$se, p_side = p_side, level = control$level, B = control$B,
    weights = control$weights, project = project,
    sigma2_rule = control$sigma2_rule, information_rule = control$information
  )
  inference$coefficients <- coefficient_table(fit$Theta, inference, se_scaled * scale)
  inference
}

unscale_inference <- function(raw, scale) {
  if (scale == 1) return(raw)
  for (name in c("sigma2", "rss", "sandwich", "H")) raw[[name]] <- raw[[name]] * scale^2
  raw$information <- raw$information / scale^2
  raw$scores <- raw$scores / scale
  if (!is.null(raw$bootstrap)) {
    for (name in c("replicates", "se", "lower", "upper")) {
      raw$bootstrap[[name]] <- raw$bootstrap[[name]] * scale
    }
  }
  raw
}

# Scales the sandwich covariance so each variance is the larger of the two,
# keeping the sandwich correlations.
choose_larger_variance <- function(sandwich, model) {
  scale <- sqrt(pmax(diag(sandwich), diag(model)) / pmax(diag(sandwich), 1e-300))
  out <- sandwich * outer(scale, scale)
  dimnames(out) <- dimnames(sandwich)
  out
}

coefficient_labels <- function(fit) {
  grid <- expand.grid(basis = rownames(fit$Theta), covariate = colnames(fit$Theta),
                      stringsAsFactors = FALSE)
  paste0(grid$basis, ":", grid$covariate)
}

coefficient_table <- function(Theta, inference, se) {
  estimate <- as.double(Theta)
  z <- estimate / se
  p <- if (inference$p_side == "one-sided") {
    pnorm(z, lower.tail = FALSE)
  } else {
    pchisq(z^2, df = 1, lower.tail = FALSE)
  }
  p_name <- if (inference$p_side == "one-sided") "Pr(>z)" else "Pr(>|z|)"
  table <- data.frame(Estimate = estimate, `Std. Error` = se, check.names = FALSE)
  if (!is.null(inference$bootstrap)) table$`Boot SE` <- inference$bootstrap$se
  table$`z value` <- z
  table[[p_name]] <- p
  if (!is.null(inference$bootstrap)) {
    bounds <- percent_labels(inference$level)
    table[[paste("boot", bounds[1])]] <- inference$bootstrap$lower
    table[[paste("boot", bounds[2])]] <- inference$bootstrap$upper
  }
  table <- as.matrix(table)
  rownames(table) <- rownames(inference$vcov)
  table
}

percent_labels <- function(level) {
  alpha <- (1 - level) / 2
  paste0(format(100 * c(alpha, 1 - alpha), trim = TRUE, scientific = FALSE, digits = 3), " %")
}

require_inference <- function(fit, what) {
  if (is.null(fit$inference)) {
    stop(sprintf(paste0("%s needs inference results; refit with ",
                        "nmfre_control(inference = TRUE) or call nmfre_inference(fit)."),
                 what), call. = FALSE)
  }
  fit$inference
}

#' Covariance of the Theta estimates
#'
#' @param object An `"nmfre"` fit.
#' @param type `"chosen"` returns the covariance behind the reported standard
#'   errors (set by `se` in [nmfre_control()]); `"sandwich"` and `"model"`
#'   return those covariances.
#' @param ... Unused.
#' @return A QK x QK matrix with rows and columns named `basis:covariate`, in
#'   the column-major order of `vec(Theta)`. Limitation: for data whose
#'   scale exceeds about 1e154 the variances overflow to `Inf`; the standard
#'   errors in the coefficient table stay finite.
#' @export
vcov.nmfre <- function(object, type = c("chosen", "sandwich", "model"), ...) {
  type <- match_option(type, "type", c("chosen", "sandwich", "model"))
  inference <- require_inference(object, "vcov()")
  switch(type, chosen = inference$vcov, sandwich = inference$vcov_sandwich,
         model = inference$vcov_model)
}

#' Confidence intervals for Theta
#'
#' @param object An `"nmfre"` fit.
#' @param parm Coefficients, by name (`"Basis1:male"`) or position; all by
#'   default.
#' @param level Confidence level.
#' @param method `"Wald"` gives estimate +/- z * SE from the chosen
#'   covariance; `"boot"` gives percentile intervals of the multiplier
#'   bootstrap replicates (recomputed when `level` differs from the fit's).
#' @param ... Unused.
#' @return A matrix with one row per coefficient and the lower and upper
#'   bounds.
#' @export
confint.nmfre <- function(object, parm, level = 0.95, method = c("Wald", "boot"), ...) {
  method <- match_option(method, "method", c("Wald", "boot"))
  check_number(level, "level", min = 1e-8, max = 1 - 1e-8)
  inference <- require_inference(object, "confint()")
  labels <- rownames(inference$vcov)
  estimate <- setNames(as.double(object$Theta), labels)
  if (method == "Wald") {
    se <- sqrt(pmax(diag(inference$vcov), 0))
    half <- qnorm(1 - (1 - level) / 2) * se
    bounds <- cbind(estimate - half, estimate + half)
  } else {
    if (is.null(inference$bootstrap) || inference$B == 0) {
      stop("No bootstrap replicates; refit with B > 0 or call nmfre_inference(fit, B = 500).",
           call. = FALSE)
    }
    if (isTRUE(all.equal(level, inference$level))) {
      bounds <- cbind(inference$bootstrap$lower, inference$bootstrap$upper)
    } else {
      again <- nmfre_inference(object, level = level, keep_replicates = FALSE,
                               project = inference$project)
      bounds <- cbind(again$inference$bootstrap$lower, again$inference$bootstrap$upper)
    }
  }
  dimnames(bounds) <- list(labels, percent_labels(level))
  if (!missing(parm)) {
    if (is.character(parm) && !all(parm %in% labels)) {
      stop(sprintf("Unknown coefficient(s) in `parm`: %s. Valid names look like '%s'.",
                   paste(setdiff(parm, labels), collapse = ", "), labels[1]), call. = FALSE)
    }
    if (is.numeric(parm) && any(is.na(parm) | parm < 1 | parm > length(labels))) {
      stop(sprintf("`parm` positions must be between 1 and %d, the number of coefficients.",
                   length(labels)), call. = FALSE)
    }
    bounds <- bounds[parm, , drop = FALSE]
  }
  bounds
}

#' Joint Wald tests on Theta
#'
#' For each covariate, tests that it affects no basis (Theta's column is 0,
#' `rank` degrees of freedom); for each basis, tests that no covariate affects
#' it (Theta's row is 0, K degrees of freedom). Each statistic is
#' `theta' V^{-1} theta` with V the chosen covariance, referred to a
#' chi-square distribution. Under non-negative Theta a null on the boundary
#' makes this reference conservative.
#'
#' @param object An `"nmfre"` fit.
#' @param ... Unused.
#' @return A data frame of class `"anova"` with the term, its kind, the
#'   statistic, its degrees of freedom and the p-value.
#' @export
anova.nmfre <- function(object, ...) {
  if (length(list(...)) > 0L) {
    stop(paste0("anova() on an nmfre fit takes one fit and gives joint Wald tests on its ",
                "Theta; comparing fits is not supported. Use AIC() or BIC() to compare them."),
         call. = FALSE)
  }
  inference <- require_inference(object, "anova()")
  Theta <- object$Theta
  Q <- nrow(Theta)
  K <- ncol(Theta)
  index <- matrix(seq_len(Q * K), Q, K)
  wald <- function(positions) {
    estimate <- as.double(Theta)[positions]
    V <- inference$vcov[positions, positions, drop = FALSE]
    as.double(crossprod(estimate, solve(V, estimate)))
  }
  covariate_stats <- vapply(seq_len(K), function(k) wald(index[, k]), double(1))
  basis_stats <- vapply(seq_len(Q), function(q) wald(index[q, ]), double(1))
  table <- data.frame(
    Term = c(colnames(Theta), rownames(Theta)),
    Kind = c(rep("covariate", K), rep("basis", Q)),
    Chisq = c(covariate_stats, basis_stats),
    Df = c(rep(Q, K), rep(K, Q)),
    stringsAsFactors = FALSE
  )
  table$`Pr(>Chisq)` <- pchisq(table$Chisq, table$Df, lower.tail = FALSE)
  rownames(table) <- paste(table$Kind, table$Term, sep = ": ")
  table$Term <- NULL
  table$Kind <- NULL
  structure(table, class = c("anova", "data.frame"),
            heading = sprintf("Joint Wald tests on Theta (%s covariance)\n", inference$se_type))
}

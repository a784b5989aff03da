# Marginal Gaussian likelihood of an nmfre fit, with the random effects U
# integrated out; AIC() and BIC() follow from it through stats.

#' Log-likelihood of an nmfre fit
#'
#' Evaluates the Gaussian marginal likelihood with the random effects
#' integrated out: the columns of Y are independent,
#' `y_n ~ N(X Theta a_n, sigma2 I_P + tau2 X X')`, at the fitted X, Theta,
#' sigma2 and tau2. [AIC()] and [BIC()] use it.
#'
#' Degrees of freedom: `P Q - Q` for X (each column sums to 1), `Q K` for
#' Theta, and 2 for sigma2 and tau2, also when the df cap sets tau2. The
#' number of observations is N, the number of units, because the columns of
#' Y are the independent replications; BIC's penalty is therefore
#' `df * log(N)`.
#'
#' Limitation: the fit maximises the penalised objective
#' `||Y - X (Theta A + U)||^2 + lambda ||U||^2` under the df cap, not this
#' likelihood, so the value is the likelihood at the fitted parameters, not
#' its maximum. AIC and BIC built from it are heuristics for comparing
#' ranks or covariate sets on the same data.
#'
#' @param object An `"nmfre"` fit.
#' @param ... Unused.
#' @return An object of class `"logLik"` with attributes `df` and `nobs`.
#' @examples
#' data(Orthodont, package = "nlme")
#' fit1 <- nmfre(distance ~ 1, data = Orthodont, unit = ~ Subject,
#'               occasion = ~ age, rank = 1, df_rate = 0.21,
#'               control = nmfre_control(inference = FALSE))
#' logLik(fit1)
#' AIC(fit1)
#' BIC(fit1)
#' @export
logLik.nmfre <- function(object, ...) {
  value <- marginal_loglik(object$Y - fitted_matrix(object, "fixed"), object$X,
                           object$sigma2, object$tau2)
  P <- nrow(object$X)
  Q <- ncol(object$X)
  K <- ncol(object$Theta)
  structure(value, df = P * Q - Q + Q * K + 2, nobs = ncol(object$Y), class = "logLik")
}

# Sums log N(r_n; 0, Sigma) over the columns r_n of R, with
# Sigma = sigma2 I_P + tau2 X X'. The Woodbury identity keeps the work at
# O(P Q^2 + P N Q) instead of a P x P factorisation: with
# lambda = sigma2 / tau2 and M = X'X + lambda I_Q,
#   Sigma^{-1} = (I - X M^{-1} X') / sigma2,
#   log det Sigma = P log sigma2 + log det M - Q log lambda.
marginal_loglik <- function(R, X, sigma2, tau2) {
  P <- nrow(R)
  N <- ncol(R)
  Q <- ncol(X)
  lambda <- sigma2 / tau2
  M <- crossprod(X) + diag(lambda, Q)
  factor <- chol(M)
  log_det_sigma <- P * log(sigma2) + 2 * sum(log(diag(factor))) - Q * log(lambda)

  projected <- backsolve(factor, crossprod(X, R), transpose = TRUE)
  quadratic <- (sum(R^2) - sum(projected^2)) / sigma2

  -0.5 * (P * N * log(2 * pi) + N * log_det_sigma + quadratic)
}

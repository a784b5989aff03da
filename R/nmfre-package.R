#' nmfre: Non-Negative Matrix Factorization with Random Effects
#'
#' Fits `Y = X (Theta A + U) + E` to a non-negative P x N matrix Y with a
#' non-negative basis X, covariate effects Theta and unit-level random effects
#' U, keeping the random effects' degrees of freedom below a cap, and gives
#' inference on Theta by sandwich standard errors and a multiplier (wild)
#' bootstrap. The method is that of Satoh (2026), arXiv:2603.01468.
#'
#' Start with [nmfre()]; tuning is in [nmfre_control()].
#'
#' @keywords internal
#' @aliases nmfre-package
#' @useDynLib nmfre, .registration = TRUE
#' @importFrom stats coef confint fitted formula model.frame model.matrix
#'   model.response nobs pchisq pnorm predict qnorm quantile residuals sd
#'   setNames simulate terms update vcov sigma logLik AIC BIC na.omit
#'   delete.response model.weights rnorm
"_PACKAGE"

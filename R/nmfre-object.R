#' Elements of an nmfre fit
#'
#' [nmfre()] returns a list of class `"nmfre"`. Use the accessors where they
#' exist; the elements are documented here for programming.
#'
#' \describe{
#'   \item{`X`}{P x Q basis, non-negative, columns summing to 1; rows named
#'     after Y's rows, columns after the bases.}
#'   \item{`Theta`}{Q x K covariate effects.}
#'   \item{`U`}{Q x N random effects (ridge predictions), each row centred.}
#'   \item{`sigma2`, `tau2`, `lambda`}{Residual and random-effect variances at
#'     the end of the loop, and the ridge penalty `sigma2 / tau2`.}
#'   \item{`dfU`}{Effective degrees of freedom of the random effects at the
#'     final X and lambda.}
#'   \item{`cap`}{List: `type` (`"rate"`, `"absolute"` or `"off"`), `rate`,
#'     `value` (the ceiling on dfU), `ratio` (dfU / ceiling), `hit` (whether
#'     the cap ever raised lambda), `hits` (how many iterations it did),
#'     `first_hit` and `last_hit` (iterations, NA when never), `binding`
#'     (ratio >= 0.99 at the end).}
#'   \item{`iterations`, `converged`, `stop_reason`}{Iterations run, whether
#'     the relative change of the objective fell below `epsilon`, and why the
#'     loop stopped.}
#'   \item{`objective`}{Penalised objective after each iteration.}
#'   \item{`rss`}{Residual sum of squares at the end.}
#'   \item{`fitted`}{P x N fitted values `X (Theta A + U)`.}
#'   \item{`Y`, `A`}{The data as fitted.}
#'   \item{`rank`, `theta`, `df_rate`, `control`, `call`}{Settings of the fit.}
#'   \item{`dfscan`}{Present when `df_rate = NULL` chose the rate: the
#'     [nmfre_dfscan()] table the choice was made from.}
#'   \item{`inference`}{`NULL`, or a list with the conditional residual
#'     variance `sigma2`, the covariances `vcov` (chosen), `vcov_sandwich`
#'     and `vcov_model`, the `information` matrix, the `bootstrap` summaries
#'     (`se`, `lower`, `upper`, and `replicates` when kept) and the
#'     `coefficients` table; see [nmfre_inference()].}
#' }
#' @name nmfre-object
NULL

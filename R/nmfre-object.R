#' Elements of an nmfre fit
#'
#' [nmfre()] returns a list of class `"nmfre"`. Use the accessors where they
#' exist; the elements are documented here for programming. Fitted values
#' and residuals are not stored, so that a fit holds no second matrix the
#' size of Y: [fitted()] and [residuals()] compute them from the elements.
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
#'     the fit converged (with `polish`, the default: the relative change of
#'     the objective below `epsilon` and the fixed-point residuals below
#'     `kkt_tolerance`; without it, the relative change alone), and why the
#'     loop stopped.}
#'   \item{`optimum`}{List describing how the optimum was reached:
#'     `paper_iterations` (iterations of the published loop before
#'     polishing), `kkt_x` and `kkt_theta` (fixed-point residuals of the last
#'     iteration, see [nmfre_control()]), `variance_change` (relative change
#'     of the variances at their last update), and with `nstart > 0` the
#'     table `starts` and the spreads `objective_spread` and `theta_spread`
#'     across starts.}
#'   \item{`objective`}{Penalised objective after each iteration.}
#'   \item{`rss`}{Residual sum of squares at the end.}
#'   \item{`Y`, `A`}{The data as fitted.}
#'   \item{`scale`}{The power of 2 that Y was divided by inside the core
#'     when its scale was extreme (1 otherwise); the stored estimates are on
#'     Y's own scale.}
#'   \item{`rank`, `theta`, `df_rate`, `control`, `call`}{Settings of the fit.}
#'   \item{`dfscan`}{Present when `df_rate = NULL` chose the rate: the
#'     [nmfre_dfscan()] table the choice was made from.}
#'   \item{`inference`}{`NULL`, or a list with the conditional residual
#'     variance `sigma2`, the covariances `vcov` (chosen), `vcov_sandwich`
#'     and `vcov_model`, the `information` matrix, the `bootstrap` summaries
#'     (`se`, `lower`, `upper`, and `replicates` when kept) and the
#'     `coefficients` table; see [nmfre_inference()].}
#' }
#'
#' Fits made by the formula method ([nmfre.formula()]) also store:
#'
#' \describe{
#'   \item{`formula`, `data_name`}{The model formula and the deparsed `data`
#'     argument.}
#'   \item{`terms`, `contrasts`, `xlevels`}{Terms of the formula's right
#'     side, the contrasts used and the levels of its factors, which
#'     [predict.nmfre()] needs to build A for new units.}
#'   \item{`model`}{The unit-level model frame: one row per unit (named after
#'     the unit), the variables of the right side.}
#'   \item{`na_action`}{`NULL`, or the positions of the units dropped for
#'     missing values, named after them, of class `"omit"` or `"exclude"`.}
#'   \item{`layout`}{List: `type` (`"wide"` or `"long"`), the `unit` and
#'     `occasion` formulas, the sorted `occasions` (long layout), and the
#'     `response` label.}
#' }
#'
#' @name nmfre-object
NULL

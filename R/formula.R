# Formula interface: builds the P x N response Y and the K x N covariates A
# from a data frame, then fits through the matrix method. Two layouts:
# wide (one data row per unit, the P measurements in columns on the left of
# the formula) and long (one row per unit and occasion, pivoted so that the
# occasions become Y's rows).

#' Fit NMF-RE from a formula and a data frame
#'
#' The formula method of [nmfre()]. The right side of the formula describes
#' the unit covariates A exactly as in [lm()]: factors are expanded with
#' their contrasts, interactions and transformations are allowed, an
#' intercept is included unless the formula has `0 +` or `- 1`.
#'
#' **Wide layout** (`unit` and `occasion` not given): each data row is one
#' unit, and the left side holds its P measurements, either
#' `cbind(x1, x2, x3)` or a matrix column of `data`.
#'
#' **Long layout** (repeated measures): each data row is one measurement of
#' one unit at one occasion; `unit = ~ Subject` names the unit and
#' `occasion = ~ age` the occasion. The data are pivoted to Y with the
#' occasions as rows, in sorted order (level order for factors), and the
#' units as columns, in order of first appearance. Every unit needs exactly
#' one row per occasion, and the covariates must be constant within a unit
#' because Theta acts on whole units. A `.` on the right side stands for
#' every column except the response, `unit` and `occasion`.
#'
#' `subset` and `na.action` act as in [lm()]. In long layout a unit with a
#' missing value in any of its rows is dropped as a whole, and `subset`
#' must keep or remove whole units. A message states how many units were
#' dropped. With `na.action = na.exclude`, [fitted()] and [residuals()]
#' have `NA` columns for the dropped units.
#'
#' The fit is identical to the matrix call `nmfre(Y, A, ...)` on the Y and
#' A that the formula builds. It additionally stores the formula, the data's
#' name, the terms, contrasts and factor levels that [predict.nmfre()] needs
#' for new data; see [nmfre-object].
#'
#' @param Y For this method, a two-sided formula: measurements on the left,
#'   unit covariates on the right (named `Y` because the generic's first
#'   argument is the response).
#' @param data A data frame (or list) holding the variables of the formula;
#'   if `NULL`, the variables are taken from the formula's environment.
#' @inheritParams nmfre
#' @param subset An optional expression, evaluated in `data`, selecting
#'   rows, as in [lm()].
#' @param na.action A function (or its name) for rows with missing values,
#'   by default `getOption("na.action")`; `na.omit` and `na.exclude` drop
#'   the affected units, `na.fail` stops.
#' @param unit,occasion One-sided formulas (or column names) naming the unit
#'   and the occasion variables of long-layout data, such as `~ Subject` and
#'   `~ age`. Give both or neither.
#' @return An object of class `"nmfre"`; see [nmfre-object].
#' @seealso [nmfre()] for the model and the matrix method,
#'   [summary.nmfre()], [predict.nmfre()].
#' @examples
#' # Long layout: four ages per child; Female as the reference level keeps
#' # the sex effect positive, as non-negative Theta requires.
#' data(Orthodont, package = "nlme")
#' orthodont <- as.data.frame(Orthodont)
#' orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
#' fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject,
#'              occasion = ~ age, rank = 1, df_rate = 0.21)
#' fit
#'
#' # Wide layout: one row per unit, three measurements in columns.
#' set.seed(1)
#' wide <- data.frame(group = gl(2, 15, labels = c("a", "b")))
#' scores <- 10 + 5 * (wide$group == "b") + rnorm(30)
#' wide$x1 <- 0.2 * scores + rnorm(30, sd = 1)
#' wide$x2 <- 0.3 * scores + rnorm(30, sd = 1)
#' wide$x3 <- 0.5 * scores + rnorm(30, sd = 1)
#' fit_wide <- nmfre(cbind(x1, x2, x3) ~ group, data = wide, rank = 1, df_rate = 0.5,
#'                   control = nmfre_control(B = 100))
#' fixef(fit_wide)
#' @export
nmfre.formula <- function(Y, data = NULL, rank = 2, df_rate = 0.1,
                          theta = c("nonneg", "free"), control = nmfre_control(),
                          subset, na.action, unit = NULL, occasion = NULL, ...) {
  call <- match.call()
  call[[1L]] <- as.name("nmfre")
  check_no_dots(...)
  theta <- match_option(theta, "theta", c("nonneg", "free"))
  built <- formula_design(Y, data, theta, call$subset, na.action, unit, occasion,
                          parent.frame())
  formula <- built$formula
  design <- built$design
  frame <- built$frame
  layout <- built$layout
  unit <- built$unit
  occasion <- built$occasion
  A <- built$A
  contrasts <- built$contrasts

  fit <- nmfre.default(design$Y, A, rank = rank, df_rate = df_rate, theta = theta,
                       control = control)
  fit$call <- call
  fit$formula <- formula
  fit$data_name <- if (is.null(call$data)) NULL else deparse1(call$data)
  fit$terms <- design$terms
  fit$contrasts <- contrasts
  fit$xlevels <- stats::.getXlevels(design$terms, design$unit_frame)
  fit$model <- design$unit_frame
  fit$na_action <- frame$na_action
  fit$layout <- list(type = layout, unit = unit, occasion = occasion,
                     occasions = design$occasions, response = design$response_label)
  fit
}

# Builds Y (P x N) and A (K x N) from a formula and data, in wide or long
# layout, with the frame and design kept for the fit's methods. `subset` is
# the unevaluated subset expression of the caller.
formula_design <- function(formula, data, theta, subset, na.action, unit, occasion, env) {
  formula <- check_model_formula(formula)
  check_data(data)
  unit <- check_layout_formula(unit, "unit")
  occasion <- check_layout_formula(occasion, "occasion")
  layout <- choose_layout(unit, occasion)
  if (layout == "long") formula <- expand_dot_long(formula, data, unit, occasion)
  check_formula_variables(formula, unit, occasion, data)
  check_response_variables(formula, data)

  frame <- build_frame(formula, data, subset, unit, occasion, env)
  frame <- drop_incomplete_units(frame, layout, na.action)
  design <- if (layout == "wide") wide_design(frame) else long_design(frame, unit, occasion)
  A <- covariate_matrix(design$unit_frame, design$terms, theta)
  contrasts <- attr(A, "contrasts")
  attr(A, "contrasts") <- NULL
  check_formula_response(design$Y, design$response_label)
  list(formula = formula, design = design, frame = frame, layout = layout,
       unit = unit, occasion = occasion, A = A, contrasts = contrasts)
}

# ---- argument checks -------------------------------------------------------

check_model_formula <- function(formula) {
  if (!inherits(formula, "formula") || length(formula) != 3L) {
    stop(paste0("The formula must be two-sided, with the measurements on the left ",
                "and the unit covariates on the right, such as ",
                "cbind(x1, x2, x3) ~ sex + school or distance ~ Sex."), call. = FALSE)
  }
  formula
}

check_data <- function(data) {
  if (!is.null(data) && !is.list(data) && !is.environment(data)) {
    stop(sprintf("`data` must be a data frame, not %s.", class(data)[1]), call. = FALSE)
  }
}

# Accepts a one-sided formula naming one variable, or a single column name.
check_layout_formula <- function(spec, name) {
  if (is.null(spec)) return(NULL)
  if (is.character(spec) && length(spec) == 1L && !is.na(spec)) {
    spec <- stats::reformulate(spec)
  }
  if (!inherits(spec, "formula") || length(spec) != 2L) {
    stop(sprintf(paste0("`%s` must be a one-sided formula naming one variable, ",
                        "such as ~ Subject, or a column name."), name), call. = FALSE)
  }
  expression <- spec[[2L]]
  if (is.call(expression) && as.character(expression[[1L]]) %in% c("+", "*", ":", "|", "-")) {
    stop(sprintf("`%s` must name a single variable, not %s.", name, deparse1(expression)),
         call. = FALSE)
  }
  spec
}

choose_layout <- function(unit, occasion) {
  if (is.null(unit) && is.null(occasion)) return("wide")
  if (is.null(unit) || is.null(occasion)) {
    given <- if (is.null(unit)) "occasion" else "unit"
    stop(sprintf(paste0("`%s` was given without `%s`. The long layout needs both, ",
                        "for example unit = ~ Subject, occasion = ~ age; the wide ",
                        "layout (one row per unit) needs neither."),
                 given, setdiff(c("unit", "occasion"), given)), call. = FALSE)
  }
  "long"
}

# In long layout a `.` must not pull the unit and occasion columns into A.
expand_dot_long <- function(formula, data, unit, occasion) {
  if (!"." %in% all.vars(formula[[3L]]) || !is.data.frame(data)) return(formula)
  excluded <- c(all.vars(unit), all.vars(occasion))
  expanded <- stats::terms(formula, data = data[setdiff(names(data), excluded)])
  stats::formula(expanded)
}

check_formula_variables <- function(formula, unit, occasion, data) {
  env <- environment(formula)
  check_found(formula, "the formula", data, env)
  if (!is.null(unit)) check_found(unit, "`unit`", data, env)
  if (!is.null(occasion)) check_found(occasion, "`occasion`", data, env)
}

check_found <- function(expression, where, data, env) {
  columns <- if (is.environment(data)) ls(data) else names(data)
  for (variable in setdiff(all.vars(expression), ".")) {
    in_data <- variable %in% columns
    in_env <- exists(variable, envir = env) && !is.function(get(variable, envir = env))
    if (!in_data && !in_env) {
      stop(sprintf(paste0("Variable '%s' in %s was not found in `data` or in the ",
                          "formula's environment. Check its spelling; %s."),
                   variable, where, describe_columns(columns)), call. = FALSE)
    }
  }
}

describe_columns <- function(columns) {
  if (length(columns) == 0L) return("`data` has no columns")
  shown <- utils::head(columns, 20L)
  more <- if (length(columns) > 20L) sprintf(" and %d more", length(columns) - 20L) else ""
  sprintf("the columns of `data` are %s%s", paste(shown, collapse = ", "), more)
}

# Factors and strings would otherwise reach cbind() and turn into codes.
check_response_variables <- function(formula, data) {
  env <- environment(formula)
  for (variable in all.vars(formula[[2L]])) {
    value <- eval(as.name(variable), if (is.null(data)) env else data, env)
    if (!is.numeric(value) || is.factor(value)) {
      stop(sprintf(paste0("Response variable '%s' is %s, but the measurements on ",
                          "the left of the formula must be numeric. Put factors and ",
                          "other covariates on the right side."),
                   variable, describe_class(value)), call. = FALSE)
    }
  }
}

describe_class <- function(value) {
  kind <- class(value)[1]
  article <- if (grepl("^[aeiou]", kind)) "an" else "a"
  paste(article, kind)
}

# ---- model frame and missing values ----------------------------------------

# Evaluates the model frame as lm() does, keeping every row (na.pass) so that
# missing values can be handled per unit afterwards. The unit and occasion
# expressions travel as the extra columns "(unit)" and "(occasion)".
build_frame <- function(formula, data, subset, unit, occasion, env) {
  frame_call <- quote(stats::model.frame(formula = formula_value, data = data_value,
                                         na.action = stats::na.pass,
                                         drop.unused.levels = TRUE))
  if (!is.null(subset)) frame_call$subset <- subset
  if (!is.null(unit)) {
    frame_call$unit <- unit[[2L]]
    frame_call$occasion <- occasion[[2L]]
  }
  values <- list(formula_value = formula,
                 data_value = if (is.null(data)) environment(formula) else data)
  frame <- eval(frame_call, values, env)
  list(frame = frame, terms = attr(frame, "terms"))
}

resolve_na_action <- function(na.action) {
  if (missing(na.action) || is.null(na.action)) {
    na.action <- getOption("na.action", "na.omit")
  }
  if (is.character(na.action)) na.action <- get(na.action, mode = "function")
  if (!is.function(na.action)) {
    stop("`na.action` must be a function such as na.omit, or its name.", call. = FALSE)
  }
  na.action
}

# Applies na.action to the rows and then drops every unit that lost a row, so
# that a long-layout unit is either complete or absent. Records the dropped
# units in the class of na.action's result ("omit" or "exclude").
drop_incomplete_units <- function(built, layout, na.action) {
  frame <- built$frame
  rows_before <- nrow(frame)
  units_all <- if (layout == "wide") rownames(frame) else unit_keys(frame[["(unit)"]])
  unit_order <- unique(units_all)

  kept <- resolve_na_action(na.action)(frame)
  omitted <- attr(kept, "na.action")
  dropped_units <- unique(units_all[as.integer(omitted)])
  keep_rows <- !units_all %in% dropped_units
  frame <- frame[keep_rows, , drop = FALSE]
  frame <- drop_unused_levels(frame)
  attr(frame, "terms") <- built$terms

  na_action <- NULL
  if (length(dropped_units) > 0L) {
    positions <- match(dropped_units, unit_order)
    na_action <- structure(positions, names = dropped_units,
                           class = if (inherits(omitted, "exclude")) "exclude" else "omit")
    rows <- ""
    if (layout == "long") rows <- sprintf(" (%s)", count_label(rows_before - nrow(frame), "row"))
    message(sprintf("nmfre: dropped %d of %d units%s because of missing values.",
                    length(dropped_units), length(unit_order), rows))
  }
  list(frame = frame, terms = built$terms, na_action = na_action)
}

unit_keys <- function(unit) as.character(unit)

count_label <- function(count, noun) {
  sprintf("%d %s%s", count, noun, if (count == 1L) "" else "s")
}

drop_unused_levels <- function(frame) {
  for (j in seq_along(frame)) {
    if (is.factor(frame[[j]])) frame[[j]] <- droplevels(frame[[j]])
  }
  frame
}

# ---- wide and long designs ---------------------------------------------------

wide_design <- function(built) {
  frame <- built$frame
  response <- stats::model.response(frame)
  label <- deparse1(built$terms[[2L]])
  if (is.null(dim(response))) {
    stop(sprintf(paste0("The response '%s' is a single column. In the wide layout the ",
                        "left side holds the P measurements of each unit, such as ",
                        "cbind(x1, x2, x3) or a matrix column; for repeated measures ",
                        "in long layout give `unit` and `occasion`."), label),
         call. = FALSE)
  }
  colnames(response) <- response_names(built$terms[[2L]], colnames(response), ncol(response))
  Y <- t(response)
  colnames(Y) <- rownames(frame)
  terms <- stats::delete.response(built$terms)
  list(Y = Y, unit_frame = unit_frame(frame, terms, seq_len(nrow(frame))),
       terms = terms, occasions = NULL, response_label = label)
}

# Names the response columns: their own names, else the deparsed arguments of
# cbind(), else the response label with a number.
response_names <- function(lhs, names, count) {
  if (is.null(names)) names <- rep("", count)
  if (is.call(lhs) && identical(lhs[[1L]], as.name("cbind")) && length(lhs) - 1L == count) {
    arguments <- vapply(as.list(lhs)[-1L], deparse1, character(1))
    names[names == ""] <- arguments[names == ""]
  }
  names[names == ""] <- paste0(deparse1(lhs), seq_len(count))[names == ""]
  names
}

long_design <- function(built, unit, occasion) {
  frame <- built$frame
  label <- deparse1(built$terms[[2L]])
  response <- stats::model.response(frame)
  if (!is.null(dim(response))) {
    stop(sprintf(paste0("In the long layout the left side must be one response ",
                        "variable, not '%s'. Use the wide layout (no `unit` and ",
                        "`occasion`) for several measurement columns."), label),
         call. = FALSE)
  }
  units <- unit_keys(frame[["(unit)"]])
  unit_order <- unique(units)
  occasion_values <- frame[["(occasion)"]]
  occasion_order <- sort(unique(occasion_values))
  occasion_name <- deparse1(occasion[[2L]])
  column <- match(units, unit_order)
  row <- match(occasion_values, occasion_order)
  check_one_row_per_cell(row, column, unit_order, occasion_order, occasion_name)

  Y <- matrix(NA_real_, length(occasion_order), length(unit_order),
              dimnames = list(occasion_labels(occasion_order, occasion_name), unit_order))
  Y[cbind(row, column)] <- response

  terms <- stats::delete.response(built$terms)
  first_rows <- match(unit_order, units)
  check_constant_within_units(frame, terms, column, first_rows, unit_order)
  list(Y = Y, unit_frame = unit_frame(frame, terms, first_rows, unit_order),
       terms = terms, occasions = occasion_order, response_label = label)
}

occasion_labels <- function(values, name) {
  if (is.numeric(values)) paste0(name, format(values, trim = TRUE)) else as.character(values)
}

check_one_row_per_cell <- function(row, column, unit_order, occasion_order, occasion_name) {
  P <- length(occasion_order)
  cell <- (column - 1L) * P + row
  duplicate <- which(duplicated(cell))
  if (length(duplicate) > 0L) {
    first <- duplicate[1L]
    stop(sprintf(paste0("Unit '%s' has %d rows for occasion %s = %s. The long layout ",
                        "needs exactly one row per unit and occasion; check `unit` ",
                        "and `occasion`, or aggregate the repeated rows first."),
                 unit_order[column[first]], sum(cell == cell[first]), occasion_name,
                 format(occasion_order[row[first]])), call. = FALSE)
  }
  counts <- tabulate(cell, nbins = P * length(unit_order))
  if (any(counts == 0L)) {
    # Cells are numbered column-major, so the first absent cell belongs to the
    # first incomplete unit in order of appearance.
    absent <- which(counts == 0L)
    first <- absent[1L] - 1L
    incomplete <- length(unique((absent - 1L) %/% P))
    stop(sprintf(paste0("Unit '%s' has no row for occasion %s = %s, and %d unit(s) in ",
                        "all lack an occasion. Every unit needs a measurement at each ",
                        "of the %d occasions (%s): remove incomplete units with ",
                        "`subset`, or impute the missing measurements."),
                 unit_order[first %/% P + 1L], occasion_name,
                 format(occasion_order[first %% P + 1L]), incomplete, P,
                 paste(format(occasion_order, trim = TRUE), collapse = ", ")),
         call. = FALSE)
  }
}

# Theta acts on whole units, so a covariate that changes between a unit's
# rows has no single column of A to go into.
check_constant_within_units <- function(frame, terms, column, first_rows, unit_order) {
  for (name in covariate_columns(frame, terms)) {
    value <- frame[[name]]
    varies <- differs_from_first(value, first_rows[column])
    if (any(varies)) {
      unit <- unit_order[min(column[varies])]
      stop(sprintf(paste0("Covariate '%s' varies within unit '%s'. In the long layout ",
                          "each unit is one column of Y, so covariates must be constant ",
                          "within a unit; a variable that changes between occasions ",
                          "belongs in `occasion`, not in the formula."), name, unit),
           call. = FALSE)
    }
  }
}

covariate_columns <- function(frame, terms) {
  variables <- vapply(as.list(attr(terms, "variables"))[-1L], deparse1, character(1))
  intersect(variables, names(frame))
}

differs_from_first <- function(value, first) {
  if (is.matrix(value)) {
    reference <- value[first, , drop = FALSE]
    return(rowSums(different_values(value, reference)) > 0)
  }
  if (is.factor(value)) value <- as.character(value)
  different_values(value, value[first])
}

different_values <- function(a, b) {
  missing_a <- is.na(a)
  missing_b <- is.na(b)
  (missing_a != missing_b) | (!missing_a & !missing_b & a != b)
}

# One row per unit, with the terms attached so that model.matrix() reads the
# columns instead of re-evaluating the formula's expressions.
unit_frame <- function(frame, terms, rows, unit_names = NULL) {
  columns <- covariate_columns(frame, terms)
  units <- frame[rows, columns, drop = FALSE]
  if (!is.null(unit_names)) rownames(units) <- unit_names
  attr(units, "terms") <- terms
  units
}

# ---- covariates and response -----------------------------------------------

covariate_matrix <- function(unit_frame, terms, theta) {
  design <- stats::model.matrix(terms, unit_frame)
  if (ncol(design) == 0L) {
    stop(paste0("The right side of the formula gives no covariates. Keep the ",
                "intercept (drop `0 +` or `- 1`) or add a covariate."), call. = FALSE)
  }
  A <- t(design)
  attr(A, "assign") <- NULL
  attr(A, "contrasts") <- attr(design, "contrasts")
  storage.mode(A) <- "double"
  if (any(!is.finite(A))) {
    stop(paste0("The model matrix has missing or non-finite values. Check the ",
                "covariates, or drop incomplete units with na.action = na.omit."),
         call. = FALSE)
  }
  if (theta == "nonneg" && any(A < 0)) {
    negative <- rownames(A)[apply(A < 0, 1, any)]
    stop(sprintf(paste0("Model matrix column(s) %s have negative values, but ",
                        "non-negative Theta needs non-negative covariates. Rescale ",
                        "them in the data or the formula (for example to [0, 1]), ",
                        "or use theta = \"free\"."),
                 paste0("'", negative, "'", collapse = ", ")), call. = FALSE)
  }
  check_collinear(A, what = "The model matrix columns",
                  remedy = "Remove a term from the formula.")
  A
}

check_formula_response <- function(Y, label) {
  if (any(!is.finite(Y))) {
    stop(sprintf(paste0("The response '%s' has %d missing or non-finite values. ",
                        "Drop incomplete units with na.action = na.omit, or impute ",
                        "the values."), label, sum(!is.finite(Y))), call. = FALSE)
  }
  if (any(Y < 0)) {
    first <- which(Y < 0, arr.ind = TRUE)[1L, ]
    stop(sprintf(paste0("The response '%s' has %d negative values (the first for unit ",
                        "'%s', measurement '%s'); NMF-RE needs non-negative ",
                        "measurements. Shift or rescale them."),
                 label, sum(Y < 0), colnames(Y)[first[2L]], rownames(Y)[first[1L]]),
         call. = FALSE)
  }
}

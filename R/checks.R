# Argument checks shared by the user-facing functions. Each raises an error
# that names the argument and says what a valid value looks like.

check_number <- function(value, name, min = -Inf, max = Inf) {
  if (!is.numeric(value) || length(value) != 1L || is.na(value) ||
      !is.finite(value) && !(is.infinite(max) && value == Inf) ||
      value < min || value > max) {
    stop(sprintf("`%s` must be a single number between %s and %s, not %s.",
                 name, format(min), format(max), describe_value(value)),
         call. = FALSE)
  }
  invisible(value)
}

check_whole <- function(value, name, min = 0, max = 2^31 - 1) {
  if (!is.numeric(value) || length(value) != 1L || is.na(value) ||
      !is.finite(value) || value != round(value) || value < min || value > max) {
    stop(sprintf("`%s` must be a whole number between %s and %s, not %s.",
                 name, format(min), format(max, scientific = FALSE),
                 describe_value(value)),
         call. = FALSE)
  }
  invisible(value)
}

check_seed <- function(value, name) {
  check_whole(value, name, min = 0, max = 2^53)
}

check_flag <- function(value, name) {
  if (!is.logical(value) || length(value) != 1L || is.na(value)) {
    stop(sprintf("`%s` must be TRUE or FALSE, not %s.", name, describe_value(value)),
         call. = FALSE)
  }
  invisible(value)
}

match_option <- function(value, name, choices) {
  if (identical(value, choices)) return(choices[1])
  if (!is.character(value) || length(value) != 1L || is.na(value) ||
      !value %in% choices) {
    stop(sprintf("`%s` must be one of %s, not %s.", name,
                 paste0("\"", choices, "\"", collapse = ", "),
                 describe_value(value)),
         call. = FALSE)
  }
  value
}

describe_value <- function(value) {
  if (is.null(value)) return("NULL")
  if (is.function(value)) return("a function")
  if (length(value) != 1L) {
    return(sprintf("a %s of length %d", class(value)[1], length(value)))
  }
  if (is.character(value)) return(sprintf("\"%s\"", value))
  format(value)
}

# Converts Y (matrix or data frame) to a double matrix and checks it.
check_response <- function(Y, name = "Y") {
  if (is.data.frame(Y)) {
    numeric_columns <- vapply(Y, is.numeric, logical(1))
    if (!all(numeric_columns)) {
      stop(sprintf(paste0("`%s` must be numeric, but column(s) %s are not. ",
                          "Drop or convert them before fitting."),
                   name, paste0("'", names(Y)[!numeric_columns], "'", collapse = ", ")),
           call. = FALSE)
    }
    Y <- as.matrix(Y)
  }
  if (!is.matrix(Y) || !is.numeric(Y)) {
    kind <- if (is.matrix(Y)) paste(typeof(Y), "matrix") else class(Y)[1]
    stop(sprintf("`%s` must be a numeric matrix (P measurements x N units), not a %s.",
                 name, kind), call. = FALSE)
  }
  # One pass in Rust instead of logical temporaries the size of Y.
  if (!is.double(Y)) storage.mode(Y) <- "double"
  scan <- rust_summarise(Y)
  if (scan$nonfinite > 0) {
    first <- arrayInd(scan$first_nonfinite, dim(Y))
    stop(sprintf(paste0("`%s` has %d missing or non-finite values (NA, NaN or Inf); ",
                        "the first is at row %d, column %d. Remove or impute them."),
                 name, scan$nonfinite, first[1], first[2]), call. = FALSE)
  }
  if (scan$negative > 0) {
    first <- arrayInd(scan$first_negative, dim(Y))
    stop(sprintf(paste0("`%s` has %d negative entries (the first at row %d, ",
                        "column %d); NMF-RE needs non-negative data. Shift or ",
                        "rescale the measurements."),
                 name, scan$negative, first[1], first[2]), call. = FALSE)
  }
  if (ncol(Y) < 2L) {
    stop(sprintf("`%s` must have at least 2 units (columns), not %d.", name, ncol(Y)),
         call. = FALSE)
  }
  if (nrow(Y) < 1L) {
    stop(sprintf("`%s` must have at least one measurement (row).", name), call. = FALSE)
  }
  if (scan$zeros == length(Y)) {
    stop(sprintf("`%s` is all zero, so there is nothing to factorise.", name),
         call. = FALSE)
  }
  Y
}

check_finite <- function(M, name) {
  bad <- !is.finite(M)
  if (any(bad)) {
    first <- which(bad, arr.ind = TRUE)[1, ]
    stop(sprintf(paste0("`%s` has %d missing or non-finite values (NA, NaN or Inf); ",
                        "the first is at row %d, column %d. Remove or impute them."),
                 name, sum(bad), first[1], first[2]), call. = FALSE)
  }
}

# Converts A to a K x N double matrix (NULL gives an intercept row).
check_covariates <- function(A, N, theta) {
  if (is.null(A)) {
    return(matrix(1, nrow = 1L, ncol = N, dimnames = list("(Intercept)", NULL)))
  }
  if (is.data.frame(A)) A <- t(as.matrix(A))
  if (is.numeric(A) && is.null(dim(A))) A <- matrix(A, nrow = 1L)
  if (!is.matrix(A) || !is.numeric(A)) {
    stop("`A` must be a numeric matrix (K covariates x N units) or NULL.",
         call. = FALSE)
  }
  storage.mode(A) <- "double"
  if (nrow(A) == 0L) {
    stop("`A` has no rows; give at least one covariate, or A = NULL for an intercept.",
         call. = FALSE)
  }
  if (ncol(A) != N) {
    stop(sprintf(paste0("`A` has %d columns but `Y` has %d units; A must be K x N ",
                        "with one column per unit (transpose it if its rows are units)."),
                 ncol(A), N), call. = FALSE)
  }
  check_finite(A, "A")
  if (is.null(rownames(A))) rownames(A) <- paste0("A", seq_len(nrow(A)))
  if (anyDuplicated(rownames(A))) {
    stop(sprintf("`A` has duplicated row names (%s); give each covariate its own name.",
                 paste0("'", unique(rownames(A)[duplicated(rownames(A))]), "'", collapse = ", ")),
         call. = FALSE)
  }
  if (theta == "nonneg" && any(A < 0)) {
    bad <- rownames(A)[apply(A < 0, 1, any)]
    stop(sprintf(paste0("`A` has negative values in %s, but non-negative Theta ",
                        "needs non-negative covariates. Rescale them (for ",
                        "example to [0, 1]) or use theta = \"free\"."),
                 paste0("'", bad, "'", collapse = ", ")), call. = FALSE)
  }
  zero <- rowSums(A != 0) == 0
  if (any(zero)) {
    stop(sprintf("`A` has covariates that are 0 for every unit (%s); drop them.",
                 paste0("'", rownames(A)[zero], "'", collapse = ", ")), call. = FALSE)
  }
  check_collinear(A)
  A
}

check_collinear <- function(A, what = "The covariates in `A`",
                            remedy = "Drop one of them.") {
  gram <- tcrossprod(A)
  decomposition <- eigen(gram, symmetric = TRUE)
  tolerance <- max(dim(A)) * max(decomposition$values, 0) * .Machine$double.eps * 100
  small <- decomposition$values <= tolerance
  if (any(small)) {
    vector <- decomposition$vectors[, which(small)[1]]
    involved <- rownames(A)[abs(vector) > 1e-6]
    stop(sprintf("%s are collinear (A A' is singular): %s are linearly dependent. %s",
                 what, paste0("'", involved, "'", collapse = ", "), remedy),
         call. = FALSE)
  }
}

check_rank <- function(rank, P, N) {
  limit <- min(P, N)
  if (!is.numeric(rank) || length(rank) != 1L || is.na(rank) ||
      rank != round(rank) || rank < 1 || rank > limit) {
    stop(sprintf(paste0("`rank` must be a whole number between 1 and min(P, N) = %d, ",
                        "not %s."), limit, describe_value(rank)), call. = FALSE)
  }
  as.integer(rank)
}

"""Composition (layer L5): expressions over refs, merge methods, compositions merged tensor by
tensor, and applying a composition to a base model.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "apply_to_checkpoint": "apply",
    "compare_methods": "compare",
    "CommandEvaluator": "eval_command",
    "EvalCommandFailed": "eval_command",
    "check_output_path": "apply",
    "BaseMismatchWarning": "composition",
    "Composition": "composition",
    "Operand": "composition",
    "dtype_label": "composition",
    "scale_grid": "composition",
    "search": "composition",
    "ExpressionError": "expr",
    "MAX_DEPTH": "expr",
    "MAX_LENGTH": "expr",
    "Neg": "expr",
    "Number": "expr",
    "Product": "expr",
    "RefNode": "expr",
    "Sum": "expr",
    "Term": "expr",
    "canonical": "expr",
    "linear_terms": "expr",
    "parse": "expr",
    "runs": "expr",
    "METHODS": "merge",
    "MagnitudeQuantile": "merge",
    "MergeParams": "merge",
    "dare_mask": "merge",
    "dare_seed": "merge",
    "merge_tensor": "merge",
    "needs_thresholds": "merge",
    "CheckpointVector": "checkpoint_operand",
    "MergePlan": "mergekit",
    "ReproduceResult": "mergekit",
    "TensorParams": "settings",
    "evaluate_setting": "settings",
    "layer_positions": "settings",
    "operand_setting_keys": "merge",
    "plan_merge": "mergekit",
    "recipe_yaml": "mergekit",
    "reproduce": "mergekit",
    "write_merge": "mergekit",
}

__all__ = ["BaseMismatchWarning", "Composition", "ExpressionError", "MAX_DEPTH", "MAX_LENGTH",
           "METHODS", "MagnitudeQuantile", "MergeParams", "Neg", "Number", "Operand",
           "Product", "RefNode", "Sum", "Term", "apply_to_checkpoint", "canonical",
           "compare_methods", "CommandEvaluator", "EvalCommandFailed",
           "check_output_path", "dare_mask", "dare_seed", "dtype_label",
           "linear_terms", "merge_tensor", "needs_thresholds", "parse", "runs",
           "scale_grid", "search", "CheckpointVector", "MergePlan", "ReproduceResult",
           "TensorParams", "plan_merge", "recipe_yaml", "reproduce", "write_merge",
           "evaluate_setting", "layer_positions", "operand_setting_keys"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

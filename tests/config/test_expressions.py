"""The expression language of dataset configs: typed values, errors, safety, reproducibility."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from floe.config.expressions import (
    MAX_DEPTH,
    UNKNOWN,
    ExpressionError,
    NotKnownYet,
    evaluate,
    evaluate_tree,
    functions,
    parse,
    references,
)

REPO = Path(__file__).resolve().parents[2]

STEERING = {
    "seed_base": 1000,
    "energies": [1000, 10000, 100000],
    "outdir": "file:///data/sim/$args(dataset)",
    "gcd": "$system(gcd_dir)/GeoCalibDetector.i3.gz",
    "matrix": [[1, 2, 3], [4, 5, 6]],
    "table": {"key": "value", "0": "zero", "nested": {"deep": [10, 20]}},
    "nothing": None,
    "ratio": 0.25,
    "name": "generate",
    "quote": 'it\'s "quoted"',
}
ARGS = {"job": 7, "dataset": 42, "jobs_submitted": 1000, "task": "generate", "attempt": 3}
SYSTEM = {"gcd_dir": "/cvmfs/gcd", "scratch": "/tmp/scratch"}


def run(text: str, **scopes):
    """Evaluate with the usual scopes; keyword arguments replace one of them."""
    merged = {"steering": STEERING, "args": ARGS, "system": SYSTEM, **scopes}
    return evaluate(text, **merged)


def refusal(text: str, **scopes) -> str:
    with pytest.raises(ExpressionError) as caught:
        run(text, **scopes)
    return str(caught.value)


# ---------------------------------------------------------------- typed values


@pytest.mark.parametrize("text", ["", "plain text", "f(x) [1] 'q' \"q\"", "100 %"])
def test_text_without_dollar_is_returned_unchanged(text):
    assert run(text) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$args(job)", 7),
        ("$steering(seed_base)", 1000),
        ("$eval($steering(seed_base) + $args(job))", 1007),
        ("$eval(6 // 2)", 3),
        ("$eval(7 / 2)", 3.5),
        ("$eval(6 / 2)", 3.0),
        ("$steering(ratio)", 0.25),
        ("$eval(1 < 2)", True),
        ("$eval(not 1)", False),
        ("$steering(energies)", [1000, 10000, 100000]),
        ("$steering(table)", STEERING["table"]),
        ("$steering(nothing)", None),
        ("$steering(name)", "generate"),
        ("$choice([true])", True),
    ],
)
def test_a_whole_expression_keeps_its_type(text, expected):
    value = run(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("value", [5, 2.5, None, ["$args(job)"], {"k": "$args(job)"}])
def test_evaluate_returns_anything_but_a_string_unchanged(value):
    assert run(value) is value


def test_sum_of_ints_stays_an_int_not_a_float():
    assert repr(run("$eval($steering(seed_base) + $args(job))")) == "1007"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("job $args(job)", "job 7"),
        ("$args(job)$args(job)", "77"),
        ("half=$eval(6 / 2)", "half=3.0"),
        ("e=$steering(energies)", "e=[1000, 10000, 100000]"),
        ("t=$steering(table)[nested]", 't={"deep": [10, 20]}'),
        ("flag=$eval(1 < 2)", "flag=true"),
        ("n=$steering(nothing)", "n=null"),
        (" $args(job)", " 7"),
        ("file_$sprintf(\"%06d\", $args(job)).i3", "file_000007.i3"),
    ],
)
def test_embedded_expressions_are_substituted_as_text(text, expected):
    assert run(text) == expected


def test_the_examples_of_the_dataset_config_evaluate_per_job():
    task = {
        "env": {"SEED": "$eval($steering(seed_base) + $args(job))"},
        "outputs": [{"local": "gen.i3",
                     "url": "$steering(outdir)/gen_$sprintf(\"%06d\", $args(job)).i3"}],
        "command": ["python3", "gen.py", "--energy", "$choice($steering(energies))"],
        "gcd": "$steering(gcd)",
        "shell": "echo reconstructing job $args(job) > reco.txt",
    }
    result = evaluate_tree(task, steering=STEERING, args=ARGS, system=SYSTEM)
    assert result["env"] == {"SEED": 1007}
    assert result["outputs"] == [{"local": "gen.i3", "url": "file:///data/sim/42/gen_000007.i3"}]
    assert result["command"][:3] == ["python3", "gen.py", "--energy"]
    assert result["command"][3] in STEERING["energies"]
    assert result["gcd"] == "/cvmfs/gcd/GeoCalibDetector.i3.gz"
    assert result["shell"] == "echo reconstructing job 7 > reco.txt"


def test_evaluate_tree_returns_a_new_structure_and_leaves_keys_alone():
    tree = {"$args(job)": ["$args(job)", {"k": "$steering(name)"}], "n": 5, "f": None}
    result = evaluate_tree(tree, steering=STEERING, args=ARGS)
    assert result == {"$args(job)": [7, {"k": "generate"}], "n": 5, "f": None}
    assert tree == {"$args(job)": ["$args(job)", {"k": "$steering(name)"}], "n": 5, "f": None}


def test_a_returned_steering_list_is_a_copy_that_the_caller_may_change():
    steering = {"energies": [1, 2], "again": "$steering(energies)"}
    result = evaluate_tree(["$steering(energies)", "$steering(again)"], steering=steering)
    result[0].append(3)
    assert result[1] == [1, 2]
    assert steering["energies"] == [1, 2]


def test_arguments_may_have_spaces_around_them():
    assert run("$steering( seed_base )") == 1000
    assert run('$sprintf( "%s-%s" , a , b )') == "a-b"


# ---------------------------------------------------------------- steering recursion


def test_steering_values_holding_expressions_are_evaluated_in_the_same_scopes():
    assert run("$steering(outdir)") == "file:///data/sim/42"
    steering = {"a": "$steering(b)", "b": "$eval($steering(c) * 2)", "c": 21}
    assert evaluate("$steering(a)", steering=steering) == 42


def test_steering_lists_with_expressions_inside_are_evaluated():
    steering = {"files": ["in_$args(job).i3", "$eval(2 ** 10)"]}
    assert evaluate("$steering(files)", steering=steering, args=ARGS) == ["in_7.i3", 1024]


def test_two_steering_parameters_naming_each_other_are_a_cycle_not_a_recursion_error():
    steering = {"a": "x$steering(b)", "b": "$steering(a)"}
    with pytest.raises(ExpressionError, match="cycle: a -> b -> a"):
        evaluate("$steering(a)", steering=steering)


def test_a_steering_parameter_naming_itself_is_a_cycle():
    with pytest.raises(ExpressionError, match="cycle: a -> a"):
        evaluate("value $steering(a)", steering={"a": "$steering(a)"})


def test_a_long_chain_of_steering_parameters_stops_at_the_depth_limit():
    steering = {f"p{i}": f"$steering(p{i + 1})" for i in range(MAX_DEPTH + 8)}
    steering[f"p{MAX_DEPTH + 8}"] = "end"
    with pytest.raises(ExpressionError, match="deeper than"):
        evaluate("$steering(p0)", steering=steering)


def test_a_short_chain_of_steering_parameters_resolves():
    steering = {f"p{i}": f"$steering(p{i + 1})" for i in range(10)}
    steering["p10"] = "end"
    assert evaluate("$steering(p0)", steering=steering) == "end"


def test_steering_that_doubles_at_every_level_is_refused_before_it_fills_memory():
    steering = {"p0": "x" * 64}
    steering.update({f"p{i}": f"$steering(p{i - 1})$steering(p{i - 1})" for i in range(1, 30)})
    with pytest.raises(ExpressionError, match="characters"):
        evaluate("$steering(p29)", steering=steering)


def test_an_error_inside_a_steering_value_names_the_steering_parameter():
    message = refusal("$steering(gcd)", system=None)
    assert message.startswith("$system(gcd_dir): the site did not provide system values")
    assert "(in steering parameter gcd)" in message


def test_a_syntax_error_inside_a_steering_value_names_the_steering_parameter():
    message = refusal("$steering(broken)", steering={"broken": "$eval(1 +"})
    assert "missing ')'" in message
    assert "(in steering parameter broken)" in message


# ---------------------------------------------------------------- nesting and indexing


def test_calls_nest_inside_each_other():
    assert run("$eval($eval($eval(1 + 1) * 2) + 1)") == 5
    assert run('$sprintf("%s/%s", $steering(outdir), $steering(table)["key"])') == (
        "file:///data/sim/42/value")


def test_nesting_up_to_the_limit_works_and_beyond_it_is_an_error():
    def nested(levels: int) -> str:
        return "$eval(" * levels + "1" + " + 1)" * levels

    assert evaluate(nested(MAX_DEPTH)) == MAX_DEPTH + 1
    with pytest.raises(ExpressionError, match=f"deeper than {MAX_DEPTH} levels"):
        evaluate(nested(MAX_DEPTH + 1))


def test_deeply_nested_lists_are_an_error_not_a_recursion_error():
    with pytest.raises(ExpressionError, match="deeper than"):
        parse("$choice(" + "[" * 5000 + "]" * 5000 + ")")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$steering(energies)[1]", 10000),
        ("$steering(energies)[-1]", 100000),
        ("$steering(matrix)[0][2]", 3),
        ("$steering(matrix)[-1][-3]", 4),
        ('$steering(table)["key"]', "value"),
        ("$steering(table)['key']", "value"),
        ("$steering(table)[key]", "value"),
        ("$steering(table)[0]", "zero"),
        ("$steering(table)[nested][deep][1]", 20),
        ("$steering(energies)[$eval($args(job) % 3)]", 10000),
        ("$steering(name)[0]", "g"),
        ("e=$steering(energies)[0].i3", "e=1000.i3"),
    ],
)
def test_values_can_be_indexed_after_any_call(text, expected):
    assert run(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("$steering(energies)[3]", "index 3 is out of range for a list of 3 items"),
        ("$steering(energies)[-4]", "index -4 is out of range for a list of 3 items"),
        ("$steering(energies)[first]", 'a list is indexed by whole numbers, not "first"'),
        ("$steering(table)[missing]", 'no key "missing" (have: key, 0, nested)'),
        ("$steering(seed_base)[0]", "cannot index a whole number"),
        ("$steering(nothing)[0]", "cannot index null"),
    ],
)
def test_a_bad_index_is_an_error_naming_the_expression(text, problem):
    assert refusal(text) == f"{text}: {problem}"


# ---------------------------------------------------------------- scopes and messages


def test_a_missing_steering_parameter_is_named_with_the_ones_that_exist():
    message = refusal("$steering(seeed)", steering={"seed_base": 1, "energies": [1]})
    assert message == '$steering(seeed): no steering parameter "seeed" (have: seed_base, energies)'


def test_missing_steering_says_have_none_when_there_is_no_steering():
    assert refusal("$steering(x)", steering=None).endswith("(have: none)")


def test_a_missing_job_argument_is_named_with_the_ones_that_exist():
    message = refusal("$args(jobb)")
    assert message == ('$args(jobb): no job argument "jobb" '
                       "(have: job, dataset, jobs_submitted, task, attempt)")


def test_job_arguments_are_unknown_when_none_are_given():
    assert "job arguments are not known here" in refusal("$args(job)", args=None)


def test_system_values_are_an_error_when_the_site_provided_none():
    message = refusal("$system(gcd_dir)/x", system=None)
    assert message.startswith("$system(gcd_dir): the site did not provide system values")


def test_a_system_value_the_site_lacks_is_named_with_the_ones_it_has():
    message = refusal("$system(cvmfs)")
    assert message == ('$system(cvmfs): the site did not provide system value "cvmfs" '
                       "(have: gcd_dir, scratch)")


def test_names_may_be_quoted_or_come_from_another_call():
    assert run('$steering("seed_base")') == 1000
    assert run("$args($steering(table)[key])", args={"value": "from args"}) == "from args"


def test_expression_error_is_a_value_error_carrying_the_expression():
    with pytest.raises(ValueError) as caught:
        run("$steering(missing)")
    assert caught.value.expression == "$steering(missing)"


# ---------------------------------------------------------------- dollars and shell text


@pytest.mark.parametrize(
    "text",
    [
        "echo $HOME",
        "echo ${HOME}/x",
        "echo $(date)",
        "awk '{print $1}' data.txt",
        "cost: $5",
        "trailing $",
        "$PATH:$LD_LIBRARY_PATH",
    ],
)
def test_shell_variables_and_lone_dollars_are_left_untouched(text):
    assert run(text) == text


def test_shell_variables_sit_beside_expressions():
    assert run("cd $HOME && ./gen --job $args(job) $(hostname)") == (
        "cd $HOME && ./gen --job 7 $(hostname)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$$", "$"),
        ("price: $$5", "price: $5"),
        ("$$steering(seed_base)", "$steering(seed_base)"),
        ("$$$args(job)", "$7"),
        ("echo $$$$", "echo $$"),
    ],
)
def test_a_double_dollar_is_a_literal_dollar(text, expected):
    assert run(text) == expected


def test_quoted_arguments_are_literal_text():
    assert run('$sprintf("%s", "$args(job)")') == "$args(job)"
    assert run('$sprintf("say \\"%s\\"", hi)') == 'say "hi"'


# ---------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("text", "problem", "position"),
    [
        ("$foo(x)", "unknown function $foo", 0),
        ("a $stering(seed)", "did you mean $steering?", 2),
        ("$steering seed", "$steering must be followed by '('", 0),
        ("$eval((1 + 2)", "missing ')' to close $eval(", 0),
        ("x $steering(seed", "missing ')' to close $steering(", 2),
        ('$sprintf("%d, $args(job))', "unterminated string", 9),
        ("$choice([1, 2)", "missing ']' to close the list", 8),
        ("$steering(energies)[0", "missing ']' to close the index", 19),
        ("$steering()", "$steering takes one name", 0),
        ("$steering(a, b)", "got 2 arguments", 0),
        ("$args([job])", "$args takes a name, not a list", 0),
        ("$sprintf()", "$sprintf needs a format", 0),
        ("$choice()", "$choice needs a list or several values", 0),
        ("$eval( )", "$eval needs an expression", 0),
        ("$choice(a,,b)", "an empty argument", 10),
        ("$choice(a,)", "an empty argument", 10),
        ('$sprintf("%d" 5)', "put a comma between arguments", 14),
        ("$choice(a b\"c)", "quote inside an unquoted argument", 11),
        ("$eval(1 +)", "not an arithmetic expression", 0),
    ],
)
def test_malformed_text_is_refused_by_parse_naming_text_and_position(text, problem, position):
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"{text}: ")
    assert problem in message
    assert message.endswith(f"(at position {position})")
    assert caught.value.position == position


def test_parse_returns_the_calls_with_their_source():
    tree = parse("a$steering(m)[0]b")
    call = tree.parts[1]
    assert [type(part).__name__ for part in tree.parts] == ["Text", "Call", "Text"]
    assert (call.function, call.source, call.text, call.position) == (
        "steering", "$steering(m)", "$steering(m)[0]", 1)


# ---------------------------------------------------------------- $eval


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("-7 // 2", -4),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-$args(job)", -7),
        ("-3 ** 2", -9),
        ("+5", 5),
        ("not 0", True),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("1 == 1.0 != 2", True),
        ("0 or 5", 5),
        ("3 and 0", 0),
        ("'yes' if $args(job) > 5 else 'no'", "yes"),
        ("'a' + 'b'", "ab"),
        ("$args(task) == 'generate'", True),
        ("$steering(quote) + '!'", 'it\'s "quoted"!'),
        ("$steering(energies)[2] / $steering(energies)[0]", 100.0),
        ("$steering(nothing) == None", True),
        ("1.5e3", 1500.0),
        ("True + 1", 2),
        ("2 ** 4000 > 0", True),
    ],
)
def test_eval_computes_arithmetic_and_comparisons(code, expected):
    value = run(f"$eval({code})")
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("x + 1", "names are not allowed"),
        ("__import__('os').system('id')", "not allowed"),
        ("__import__('os')", "function calls are not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("'a'.upper()", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("[i for i in (1, 2)]", "comprehensions are not allowed"),
        ("sum(i for i in (1, 2))", "not allowed"),
        ("'abc'[0]", "subscripts are not allowed"),
        ("[1, 2]", "lists, tuples, sets and dicts are not allowed"),
        ("1, 2", "a comma makes a tuple"),
        ("{1: 2}", "lists, tuples, sets and dicts are not allowed"),
        ("f'{1}'", "f-strings are not allowed"),
        ("(y := 1)", "NamedExpr is not allowed"),
        ("1 << 2", "the operator << is not allowed"),
        ("1 & 2", "the operator & is not allowed"),
        ("~1", "the operator ~ is not allowed"),
        ("1 is 1", "the operator is is not allowed"),
        ("'a' in 'abc'", "the operator in is not allowed"),
        ("1j", "complex constants are not allowed"),
        ("b'x'", "bytes constants are not allowed"),
        ("...", "ellipsis constants are not allowed"),
        ("import os", "not an arithmetic expression"),
    ],
)
def test_eval_refuses_everything_but_arithmetic_already_at_parse(code, problem):
    text = f"$eval({code})"
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert problem.lower() in str(caught.value).lower()
    with pytest.raises(ExpressionError):
        run(text)


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("2 ** 100000", "would have more than 4096 bits"),
        ("10 ** 5000", "would have more than 4096 bits"),
        ("9 ** 9 ** 9", "would have more than 4096 bits"),
        ("(2 ** 4000) * (2 ** 4000)", "more than 4096 bits"),
        ("'a' * 1000000", "multiplying strings is not allowed"),
        ("3 * 'a'", "multiplying strings is not allowed"),
        ("'%0999999999d' % 1", "use $sprintf"),
        ("10.0 ** 400", "out of range"),
        ("2 ** 4000 / 3", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1e308 * 10", "not a finite number"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "modulo by zero"),
        ("'a' + 1", "can only concatenate str"),
        ("'a' < 1", "not supported"),
        ("-'a'", "bad operand type"),
    ],
)
def test_eval_refuses_results_that_would_abuse_resources_or_make_no_sense(code, problem):
    text = f"$eval({code})"
    message = refusal(text)
    assert message.startswith(f"{text}: ")
    assert problem in message


def test_eval_operations_nested_too_deeply_are_refused_not_a_recursion_error():
    assert "operations nest deeper than 100 levels" in refusal("$eval(1" + " + 1" * 150 + ")")


def test_eval_code_longer_than_the_limit_is_refused():
    assert "longer than 4096 characters" in refusal("$eval(" + "1 " * 2100 + ")")


def test_a_message_about_very_long_code_shows_only_its_beginning():
    text = "$eval(" + "-" * 1000 + "x)"
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert str(caught.value).startswith("$eval(" + "-" * 194 + "...: $eval: names are not")
    assert caught.value.expression == text


def test_backslashes_in_eval_strings_mean_the_same_on_every_python():
    assert run(r'$eval("\d" + "x")') == "\\dx"


def test_eval_refuses_a_list_value_and_suggests_indexing_it():
    message = refusal("$eval($steering(energies) * 2)")
    assert message == ("$eval($steering(energies) * 2): $eval works on numbers, strings and "
                       "booleans; $steering(energies) is a list (index it, as in "
                       "$steering(energies)[0])")


def test_eval_refuses_a_huge_steering_number():
    with pytest.raises(ExpressionError, match="has more than 4096 bits"):
        evaluate("$eval($steering(n) + 1)", steering={"n": 2 ** 5000})


def test_strings_substituted_into_eval_cannot_inject_code():
    steering = {"evil": "' + __import__('os').getcwd() + '"}
    assert evaluate("$eval($steering(evil) + 'x')", steering=steering) == steering["evil"] + "x"


def test_strings_inside_eval_code_are_not_scanned_for_expressions():
    assert run("$eval('$args(job)' + '!')") == "$args(job)!"


# ---------------------------------------------------------------- $sprintf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('$sprintf("%06d", $args(job))', "000007"),
        ("$sprintf('%06d', $args(job))", "000007"),
        ("$sprintf(%06d, $args(job))", "000007"),
        ('$sprintf("%s_%d.i3", $args(task), $args(job))', "generate_7.i3"),
        ('$sprintf("%.2f", $steering(ratio))', "0.25"),
        ('$sprintf("%5.1f|%-4s|%x", 2.25, ab, 255)', "  2.2|ab  |ff"),
        ('$sprintf("100%%")', "100%"),
        ('$sprintf("%(key)s!", $steering(table))', "value!"),
        ('$sprintf("%s", [1, 2])', "[1, 2]"),
        ('$sprintf("%d", $eval(2 ** 3))', "8"),
    ],
)
def test_sprintf_formats_with_python_percent_semantics(text, expected):
    assert run(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('$sprintf("%d %d", 1)', 'the format "%d %d" does not fit 1 (a whole number)'),
        ('$sprintf("%d", abc)', 'the format "%d" does not fit "abc"'),
        ('$sprintf("x", 1)', "not all arguments converted"),
        ("$sprintf($args(job))", "the format must be a string, got a whole number"),
        ('$sprintf("%*d", 5, 1)', 'instead of "*"'),
        ('$sprintf("%099999999d", 1)', "larger than 1024"),
        ('$sprintf("%.99999999f", 1)', "larger than 1024"),
    ],
)
def test_sprintf_errors_name_the_format_and_the_values(text, problem):
    message = refusal(text)
    assert message.startswith(text)
    assert problem in message


def test_sprintf_width_from_a_steering_format_is_checked_when_evaluated():
    message = refusal("$sprintf($steering(f), 1)", steering={"f": "%0999999999d"})
    assert "larger than 1024" in message


# ---------------------------------------------------------------- $choice


def test_choice_is_the_same_on_every_evaluation_of_the_same_job():
    text = "$choice($steering(energies))"
    assert {run(text) for _ in range(5)} == {run(text)}


def test_choice_varies_across_the_jobs_of_a_dataset():
    picks = [run("$choice($steering(energies))", args={**ARGS, "job": job}) for job in range(50)]
    assert set(picks) == set(STEERING["energies"])


def test_choice_varies_across_datasets_for_the_same_job():
    text = "$choice(" + ", ".join(str(n) for n in range(100)) + ")"
    picks = {run(text, args={"dataset": dataset, "job": 0}) for dataset in range(20)}
    assert len(picks) > 10


def test_choice_without_dataset_or_job_is_still_deterministic():
    assert {evaluate("$choice(a, b, c, d, e)") for _ in range(5)} == {
        evaluate("$choice(a, b, c, d, e)")}


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("$choice($steering(energies))", [1000, 10000, 100000]),
        ("$choice([1, 2.5, \"three\", $args(dataset)])", [1, 2.5, "three", 42]),
        ("$choice(red, green, blue)", ["red", "green", "blue"]),
        ("$choice([[1, 2], [3, 4]])", [[1, 2], [3, 4]]),
    ],
)
def test_choice_picks_one_of_a_list_value_a_list_literal_or_its_arguments(text, options):
    picks = [run(text, args={**ARGS, "job": job}) for job in range(30)]
    assert all(pick in options for pick in picks)
    assert len({json.dumps(pick) for pick in picks}) > 1


def test_indexing_a_choice_picks_from_the_same_row():
    for job in range(20):
        args = {**ARGS, "job": job}
        row = [run(f"$choice($steering(matrix))[{i}]", args=args) for i in range(3)]
        assert row in STEERING["matrix"]


def test_a_steering_parameter_with_a_choice_agrees_across_the_tasks_of_a_job():
    steering = {"energies": list(range(100)), "energy": "$choice($steering(energies))"}
    for job in range(10):
        args = {"dataset": 1, "job": job}
        first = evaluate("--energy $steering(energy)", steering=steering,
                         args={**args, "task": "generate"})
        second = evaluate("--energy $steering(energy)", steering=steering,
                          args={**args, "task": "reconstruct"})
        assert first == second


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("$choice([])", "nothing to choose from: the list is empty"),
        ("$choice($steering(seed_base))", "needs a list or several values, got a whole number"),
        ("$choice($steering(table))", "needs a list or several values, got a mapping"),
    ],
)
def test_choice_needs_something_to_choose_from(text, problem):
    assert refusal(text) == f"{text}: {problem}"


def test_choice_does_not_depend_on_python_hash_randomization():
    code = (
        "from floe.config.expressions import evaluate; "
        "print([evaluate('$choice(a, b, c, d, e, f, g)', args={'dataset': 3, 'job': j})"
        " for j in range(20)])"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    assert outputs == {str([evaluate("$choice(a, b, c, d, e, f, g)",
                                     args={"dataset": 3, "job": j}) for j in range(20)]) + "\n"}


# ---------------------------------------------------------------- static analysis


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", set()),
        ("$steering(seed)", {("steering", "seed")}),
        ("$eval($steering(seed_base) + $args(job))", {("steering", "seed_base"), ("args", "job")}),
        ('$sprintf("%s/%06d", $system(gcd_dir), $args(job))',
         {("system", "gcd_dir"), ("args", "job")}),
        ("$choice([$steering(a), $steering(b)])", {("steering", "a"), ("steering", "b")}),
        ("$steering(m)[$args(job)]", {("steering", "m"), ("args", "job")}),
        ('$steering("quoted name")', {("steering", "quoted name")}),
        ("$steering($args(task))", {("args", "task")}),
        ("$eval('$steering(hidden)')", set()),
        ("echo $HOME $$steering(x)", set()),
    ],
)
def test_references_lists_the_names_a_text_uses_statically(text, expected):
    assert references(text) == expected


def test_references_refuses_malformed_text():
    with pytest.raises(ExpressionError):
        references("$steering(seed")


def test_functions_lists_every_function_used_at_any_depth():
    assert functions("a $eval($steering(x) + 1) $sprintf('%s', $choice(1, $args(job)))") == {
        "eval", "steering", "sprintf", "choice", "args"}
    assert functions("echo $HOME") == set()


# ---------------------------------------------------------------- portability


PYTHON39 = next(
    (str(path) for path in sorted(Path("/root/.pyenv/versions").glob("3.9*/bin/python3"))),
    shutil.which("python3.9"),
)


@pytest.mark.skipif(PYTHON39 is None, reason="no Python 3.9 on this machine")
def test_the_language_runs_on_python_3_9_as_pilots_do():
    code = (
        "from floe.config.expressions import evaluate, ExpressionError\n"
        "s = {'base': 1000, 'e': [1, 2, 3]}\n"
        "a = {'job': 7, 'dataset': 1}\n"
        "print(evaluate('$eval($steering(base) + $args(job))', steering=s, args=a))\n"
        "print(evaluate('f_$sprintf(\"%06d\", $args(job)).i3 $choice($steering(e))',"
        " steering=s, args=a))\n"
        "try:\n"
        "    evaluate('$eval(__import__(\"os\"))')\n"
        "except ExpressionError as err:\n"
        "    print('refused')\n"
    )
    result = subprocess.run([PYTHON39, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    here = evaluate('f_$sprintf("%06d", $args(job)).i3 $choice($steering(e))',
                    steering={"e": [1, 2, 3]}, args={"job": 7, "dataset": 1})
    assert result.stdout.splitlines() == ["1007", here, "refused"]


# ---------------------------------------------------------------- values known only later


@pytest.mark.parametrize("text, scope", [
    ("$system(data)/x", {"system": UNKNOWN}),
    ("$eval($args(attempt) + 1)", {"args": {"job": 0, "attempt": UNKNOWN}}),
    ("$choice(a, b)", {"args": {"job": 0, "dataset": UNKNOWN}}),
    ("$steering(dir)", {"steering": {"dir": "$system(data)"}, "system": UNKNOWN}),
])
def test_a_value_given_as_unknown_makes_the_expression_not_known_yet_rather_than_wrong(
        text, scope):
    with pytest.raises(NotKnownYet):
        evaluate(text, **scope)


def test_the_known_parts_beside_an_unknown_one_are_still_evaluated_and_their_errors_shown():
    assert evaluate("$args(job)", args={"job": 3, "dataset": UNKNOWN}) == 3
    with pytest.raises(ExpressionError, match=r"\$eval\(1/0\): division by zero"):
        evaluate("$system(bin)/gen $eval(1/0)", system=UNKNOWN)
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate("$choice($eval(1/0), 2)", args={"job": 0, "dataset": UNKNOWN})

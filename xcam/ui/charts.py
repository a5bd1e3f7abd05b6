"""The predictions chart: one horizontal bar per label, sorted by probability, with the threshold line.

Built with Altair (a Streamlit dependency) as a Vega-Lite spec; :func:`prediction_rows` is the
pure part the tests check.
"""

from __future__ import annotations

from typing import Any, Mapping

POSITIVE_COLOR = "#d62728"
NEGATIVE_COLOR = "#1f77b4"


def prediction_rows(predictions: Mapping[str, float], threshold: float) -> list[dict[str, Any]]:
    """``[{label, probability, finding}]`` sorted by probability, highest first (ties by label)."""
    ordered = sorted(predictions.items(), key=lambda kv: (-float(kv[1]), kv[0]))
    return [
        {"label": label, "probability": round(float(p), 4), "finding": "positive" if p >= threshold else "negative"}
        for label, p in ordered
    ]


def prediction_chart(predictions: Mapping[str, float], threshold: float, title: str = "") -> Any:
    """An Altair chart: sorted bars (red at or above the threshold) and a dashed threshold rule."""
    import altair as alt
    import pandas as pd

    rows = prediction_rows(predictions, threshold)
    data = pd.DataFrame(rows)
    order = [r["label"] for r in rows]
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
            color=alt.Color(
                "finding:N",
                scale=alt.Scale(domain=["positive", "negative"], range=[POSITIVE_COLOR, NEGATIVE_COLOR]),
                legend=None,
            ),
            tooltip=["label", "probability", "finding"],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        .mark_rule(color="black", strokeDash=[4, 3])
        .encode(x="threshold:Q")
    )
    chart = alt.layer(bars, rule).properties(height=max(120, 22 * len(rows)))
    return chart.properties(title=title) if title else chart

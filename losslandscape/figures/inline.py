"""InlineFigure: the matplotlib Figure every figure function returns, which a notebook shows.

A module of its own so that matplotlib is imported only when a figure is drawn (figures/common.py
imports it from new_figure).
"""
import io

from matplotlib.figure import Figure


class InlineFigure(Figure):
    """A matplotlib Figure that shows itself in Jupyter as a PNG, made without pyplot.

    IPython shows a plain Figure as a picture only once pyplot's inline backend has registered its
    display hook (``%matplotlib inline``, or a pyplot figure drawn earlier in the session); before
    that it shows the text '<Figure size 640x480 with 1 Axes>'. _repr_png_ makes it a picture
    either way; where the hook is registered IPython uses the hook instead, so it is shown once."""

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.savefig(buffer, format='png', bbox_inches='tight')
        return buffer.getvalue()

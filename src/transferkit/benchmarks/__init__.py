"""Paper protocols as data, and the runner that fills their tables; Chollet's cats-vs-dogs
protocol for the recipes and its data-efficiency curve (:mod:`cats_vs_dogs`)."""

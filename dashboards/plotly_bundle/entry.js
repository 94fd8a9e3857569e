'use strict';
// plotly.js with only the traces sohuprof's dashboard draws.
var Plotly = require('plotly.js/lib/core');
Plotly.register([
    require('plotly.js/lib/bar'),
    require('plotly.js/lib/heatmap'),
    require('plotly.js/lib/image'),
    require('plotly.js/lib/scattergl'),
]);
module.exports = Plotly;

// Alert rules. The log rules query Application Insights for the host's own records (requests, traces) and
// for the app's OpenTelemetry instruments, named in ../telemetry.json (customMetrics: one row per instrument
// and export interval, attributes in customDimensions). See README "Deploying to Azure" for what each needs.

param location string
param tags object
param applicationInsightsId string
param eventHubNamespaceId string
param eventHubName string
@description('Where alerts are mailed; empty: rules fire in the portal only.')
param alertEmail string
@description('Dead-lettered events in an hour above which to alert.')
param deadLetteredPerHour int
@description('Seconds an event may wait in the hub before the app scores it.')
param maxLagSeconds int

var telemetry = loadJsonContent('../telemetry.json')
var actionGroups = empty(alertEmail) ? [] : [actionGroup.id]
var once = {
  numberOfEvaluationPeriods: 1
  minFailingPeriodsToAlert: 1
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-battery-alerting'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'battery'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource poisonedAlerts 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'maintenance-alerts-poisoned'
  location: location
  tags: tags
  properties: {
    displayName: 'Alerts moved to maintenance-alerts-poison'
    description: 'A head-unit alert failed maxDequeueCount deliveries and sits in the poison queue.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [applicationInsightsId]
    criteria: {
      allOf: [
        {
          query: 'union (traces | where message has "maintenance-alerts-poison"), (customMetrics | where name == "${telemetry.alertsPoisoned}" and valueSum > 0)'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: once
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource deadLettered 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'telemetry-dead-lettered-per-hour'
  location: location
  tags: tags
  properties: {
    displayName: 'Dead-lettered telemetry events per hour'
    description: 'More bad events than usual reached the dead-letter container within an hour.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    scopes: [applicationInsightsId]
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "${telemetry.eventsDeadLettered}"'
          timeAggregation: 'Total'
          metricMeasureColumn: 'valueSum'
          operator: 'GreaterThan'
          threshold: deadLetteredPerHour
          failingPeriods: once
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource consumerLag 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'telemetry-consumer-lag'
  location: location
  tags: tags
  properties: {
    displayName: 'Event Hub consumer lag'
    description: 'Events wait in car-telemetry longer than maxLagSeconds before score_telemetry handles them.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [applicationInsightsId]
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "${telemetry.eventsLagSeconds}"'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'valueMax'
          operator: 'GreaterThan'
          threshold: maxLagSeconds
          failingPeriods: once
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// Event Hubs has no consumer-lag platform metric; this rule needs no app telemetry: events keep arriving
// and nothing reads them (OutgoingMessages counts every reader of the namespace's hubs).
resource consumerStalled 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'telemetry-consumer-stalled'
  location: 'global'
  tags: tags
  properties: {
    description: 'Events arrive in car-telemetry and none are read for 15 minutes.'
    severity: 2
    enabled: true
    scopes: [eventHubNamespaceId]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'eventsArrive'
          metricNamespace: 'Microsoft.EventHub/namespaces'
          metricName: 'IncomingMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [eventHubName]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'noneRead'
          metricNamespace: 'Microsoft.EventHub/namespaces'
          metricName: 'OutgoingMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [eventHubName]
            }
          ]
          operator: 'LessThan'
          threshold: 1
          timeAggregation: 'Total'
        }
      ]
    }
    autoMitigate: true
    actions: [for id in actionGroups: {
      actionGroupId: id
    }]
  }
}

resource nightlyFailures 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'nightly-job-failures'
  location: location
  tags: tags
  properties: {
    displayName: 'Nightly job failed'
    description: 'A nightly retrain, batch-score or compliance run ended in an exception.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    scopes: [applicationInsightsId]
    criteria: {
      allOf: [
        {
          query: 'requests | where operation_Name in (dynamic(${string(telemetry.nightlyFunctions)})) and success == false'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: once
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource endpointFailures 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'scoring-endpoint-failures'
  location: location
  tags: tags
  properties: {
    displayName: 'Scoring endpoint failures'
    description: 'Scoring requests failed (unavailable after retries, or rejected).'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [applicationInsightsId]
    criteria: {
      allOf: [
        {
          query: 'union (customMetrics | where name == "${telemetry.endpointLatency}" and tostring(customDimensions.outcome) != "ok"), (exceptions | where type endswith "ScoringUnavailable" or type endswith "ScoringRejected")'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: once
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

output ruleNames array = [
  poisonedAlerts.name
  deadLettered.name
  consumerLag.name
  consumerStalled.name
  nightlyFailures.name
  endpointFailures.name
]

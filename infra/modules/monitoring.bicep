// Log Analytics and workspace-based Application Insights. Local (instrumentation-key) ingestion is off by
// default: the app sends telemetry as its managed identity (Monitoring Metrics Publisher, below), which the
// Functions host does from APPLICATIONINSIGHTS_AUTHENTICATION_STRING.

param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object
@description('Days of logs kept (30 is the free retention of the Analytics tier).')
param retentionInDays int = 30
@description('Daily ingestion cap in GB; -1 for none. A cap keeps a runaway log loop from running up a bill.')
param dailyQuotaGb int = 1
@description('false: only Entra ID (managed identity) ingestion is accepted.')
param localAuthEnabled bool = false
@description('Principals that publish telemetry (the app identity).')
param publisherPrincipalIds array

var roles = loadJsonContent('../roles.json')

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    workspaceCapping: {
      dailyQuotaGb: dailyQuotaGb
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: !localAuthEnabled
    IngestionMode: 'LogAnalytics'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in publisherPrincipalIds: {
  name: guid(appInsights.id, principalId, roles.MonitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.MonitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

output workspaceId string = workspace.id
output applicationInsightsId string = appInsights.id
output applicationInsightsName string = appInsights.name
output connectionString string = appInsights.properties.ConnectionString

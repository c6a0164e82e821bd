// Optional: the Azure ML workspace the lab used, its AutoML training cluster (scales to zero nodes) and
// the managed online endpoint battery-cycles. The endpoint's deployment (model + environment) is made by
// `python -m shared azureml deploy` after a model is registered: it needs the model, not the template.

param workspaceName string
param storageAccountName string
param location string
param tags object
param applicationInsightsId string
param keyVaultId string
@description('auto-ml-compute, as shared/adapters/azureml.py names it.')
param computeName string
param computeSize string
@minValue(1)
param computeMaxNodes int = 1
@description('battery-cycles, as shared/adapters/azureml.py names it.')
param endpointName string
@allowed(['aad_token', 'key'])
param endpointAuthMode string
@description('The app identity: AzureML Data Scientist (submits AutoML jobs, reads the workspace, scores the endpoint).')
param appPrincipalId string

var roles = loadJsonContent('../roles.json')
var restAuthModes = {
  aad_token: 'AADToken'
  key: 'Key'
}

// Azure ML's default datastores read this account with its key; the app's own account stays keyless.
resource workspaceStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the workspace reaches its default storage over the public endpoint (no virtual network here)
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35
  // checkov:skip=CKV_AZURE_206: LRS holds training data that can be registered again
  // checkov:skip=CKV_AZURE_43: checkov reads the parameter's identifier; the value (main.bicep: 'stml' + 13 characters of uniqueString) is 3-24 lowercase letters and digits
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  // checkov:skip=CKV_AZURE_243: no virtual network here, so no private endpoint: the app and azd reach the workspace over its public endpoint with Entra ID and a role
  name: workspaceName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: 'Battery alerting'
    storageAccount: workspaceStorage.id
    keyVault: keyVaultId
    applicationInsights: applicationInsightsId
    publicNetworkAccess: 'Enabled'
  }
}

resource compute 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: computeName
  location: location
  properties: {
    computeType: 'AmlCompute'
    disableLocalAuth: true
    properties: {
      vmSize: computeSize
      vmPriority: 'Dedicated'
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT2M'
      }
    }
  }
}

resource endpoint 'Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-04-01' = {
  parent: workspace
  name: endpointName
  location: location
  tags: tags
  kind: 'Managed'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    authMode: restAuthModes[endpointAuthMode]
    description: 'The best AutoML model to predict battery cycles.'
    publicNetworkAccess: 'Enabled'
  }
}

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, roles.AzureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.AzureMLDataScientist)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output workspaceName string = workspace.name
output scoringUri string = endpoint.properties.scoringUri
